"""Every example in packaging/examples/ parsed by a tool that reads its format, and checked for
what bootagent needs of it: Terraform and Packer by python-hcl2, the IAM policies linted by
parliament, the Image Builder component and the SSM document checked for their structure, and
the cloud-init user-data by cloud-init's own schema (tests/cloud_init.rs, in the container)."""

import json
import pathlib
import re

import hcl2
import parliament
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "packaging" / "examples"
TERRAFORM = EXAMPLES / "terraform"


def plain(value):
    """python-hcl2's tree as the configuration means it: string literals and labels without
    their quotes, without its own markers (`__is_block__`, `__comments__`)."""
    if isinstance(value, dict):
        return {
            plain(key): plain(item)
            for key, item in value.items()
            if key not in ("__is_block__", "__comments__")
        }
    if isinstance(value, list):
        return [plain(item) for item in value]
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def load_hcl(path):
    with path.open() as f:
        return plain(hcl2.load(f))


def terraform():
    blocks = {}
    for path in sorted(TERRAFORM.glob("*.tf")):
        for kind, items in load_hcl(path).items():
            blocks.setdefault(kind, []).extend(items)
    return blocks


def resources(kind):
    return {
        name: body
        for block in terraform().get("resource", [])
        for resource_kind, named in block.items()
        if resource_kind == kind
        for name, body in named.items()
    }


def test_the_launch_template_requires_imdsv2_and_exposes_tags_with_room_for_containers():
    (template,) = resources("aws_launch_template").values()
    (options,) = template["metadata_options"]
    assert options["http_tokens"] == "required"
    assert options["instance_metadata_tags"] == "enabled"
    assert options["http_put_response_hop_limit"] == 2
    (tags,) = template["tag_specifications"]
    assert {"Service", "Environment", "Repository"} <= set(tags["tags"])


def test_the_group_has_launch_and_termination_hooks_and_a_warm_pool():
    (group,) = resources("aws_autoscaling_group").values()
    transitions = {hook["lifecycle_transition"] for hook in group["initial_lifecycle_hook"]}
    assert transitions == {
        "autoscaling:EC2_INSTANCE_LAUNCHING",
        "autoscaling:EC2_INSTANCE_TERMINATING",
    }
    assert group["warm_pool"]


def test_every_file_the_terraform_reads_exists():
    text = "".join(p.read_text() for p in TERRAFORM.glob("*.tf"))
    paths = re.findall(r'\$\{path\.module\}/([^"]+)"', text)
    assert paths
    for path in paths:
        assert (TERRAFORM / path).is_file(), path


def rendered(name, **values):
    text = (TERRAFORM / "policies" / name).read_text()
    for key, value in values.items():
        text = text.replace("${" + key + "}", value)
    assert "${" not in text, text
    return json.loads(text)


ACCOUNT = "123456789012"
POLICIES = {
    "secrets.json.tftpl": dict(
        secret_arn=f"arn:aws:secretsmanager:eu-west-1:{ACCOUNT}:secret:web_env_prod-??????",
        kms_key_arn=f"arn:aws:kms:eu-west-1:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab",
        region="eu-west-1",
    ),
    "lifecycle.json.tftpl": dict(
        group_arn=f"arn:aws:autoscaling:eu-west-1:{ACCOUNT}:autoScalingGroup:*:autoScalingGroupName/web-prod",
    ),
    "describe-tags.json": {},
}


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_each_policy_passes_parliament(name):
    policy = parliament.analyze_policy_string(json.dumps(rendered(name, **POLICIES[name])))
    findings = [f"{f.issue}: {f.detail}" for f in policy.findings]
    assert findings == [], findings


def test_the_policies_grant_only_what_bootagent_calls():
    actions = set()
    for name, values in POLICIES.items():
        for statement in rendered(name, **values)["Statement"]:
            assert statement["Effect"] == "Allow"
            granted = statement["Action"]
            actions.update([granted] if isinstance(granted, str) else granted)
            if statement["Resource"] == "*":
                # DescribeTags supports no resource-level permissions.
                assert granted == "ec2:DescribeTags"
    assert actions == {
        "secretsmanager:GetSecretValue",
        "kms:Decrypt",
        "autoscaling:CompleteLifecycleAction",
        "autoscaling:RecordLifecycleActionHeartbeat",
        "ec2:DescribeTags",
    }


def test_the_packer_template_installs_the_package_on_an_imdsv2_image():
    packer = load_hcl(EXAMPLES / "packer" / "bootagent.pkr.hcl")
    (source,) = packer["source"]
    (ebs,) = source["amazon-ebs"].values()
    (options,) = ebs["metadata_options"]
    assert options["http_tokens"] == "required"
    (build,) = packer["build"]
    commands = [c for p in build["provisioner"] for c in p.get("shell", {}).get("inline", [])]
    assert any("dnf install -y /tmp/bootagent.rpm" in c for c in commands)
    # The seed is taken after the image's config is written, and the token does not stay.
    seed = next(i for i, c in enumerate(commands) if "bootagent prepare" in c)
    config = next(i for i, c in enumerate(commands) if "config.d/10-image.toml" in c)
    assert config < seed
    assert any(c == "rm -f /tmp/git-token" for c in commands[seed:])
    assert "--token-file /tmp/git-token" in commands[seed]
    declared = {name for block in packer["variable"] for name in block}
    used = set(re.findall(r"\$\{var\.(\w+)\}", json.dumps(packer)))
    assert used <= declared, used - declared


def test_the_image_builder_component_installs_and_validates():
    component = yaml.safe_load((EXAMPLES / "image-builder" / "bootagent.yaml").read_text())
    assert component["schemaVersion"] == 1.0
    phases = {phase["name"]: phase["steps"] for phase in component["phases"]}
    assert set(phases) == {"build", "validate"}
    known = {"S3Download", "ExecuteBash", "CreateFile"}
    for steps in phases.values():
        for step in steps:
            assert step["action"] in known, step
            assert re.fullmatch(r"[A-Za-z0-9]+", step["name"]), step["name"]
    install = " ".join(
        " ".join(step["inputs"]["commands"])
        for step in phases["build"]
        if step["action"] == "ExecuteBash"
    )
    assert "sha256sum --check" in install and "dnf install" in install and "apt-get install" in install
    # The seed is taken once the image's config is in place.
    build = [step["name"] for step in phases["build"]]
    assert build.index("Configure") < build.index("Seed")
    assert "bootagent prepare --repository" in install
    declared = {name for p in component["parameters"] for name in p}
    used = set(re.findall(r"\{\{ (\w+) \}\}", json.dumps(component)))
    assert used <= declared, used - declared


@pytest.mark.parametrize("command", ["doctor", "deploy"])
def test_the_ssm_documents_run_their_command_with_declared_parameters(command):
    document = json.loads((ROOT / "packaging" / f"ssm-bootagent-{command}.json").read_text())
    assert document["schemaVersion"] == "2.2"
    (step,) = document["mainSteps"]
    assert step["action"] == "aws:runShellScript"
    commands = " ".join(step["inputs"]["runCommand"])
    assert f"/usr/bin/bootagent {command}" in commands
    used = set(re.findall(r"\{\{ (\w+) \}\}", commands))
    assert used == set(document["parameters"])
    for parameter in document["parameters"].values():
        if "allowedPattern" in parameter:
            assert re.fullmatch(parameter["allowedPattern"], parameter["default"])
