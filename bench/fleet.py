"""A fleet booting at once: N real `bootagent boot` processes (exec mode, each with its own
instance identity, directories and secret) against one front that serves each instance's IMDS
under a path of its own and answers Secrets Manager's GetSecretValue through a token bucket —
the excess gets AWS's throttling answer (HTTP 400, ThrottlingException) — and one git daemon
serving every checkout. Run by bench/fleet; prints a markdown report and writes an SVG of calls
and throttles over time.

    fleet.py --agents N --rate R --burst B --bin BINARY --repo URL --work DIR --svg PATH
"""

import argparse
import asyncio
import fcntl
import json
import os
import re
import shutil
import statistics
import subprocess
import time
import urllib.parse


class Bucket:
    """AWS's token bucket: `burst` tokens, refilled at `rate` per second."""

    def __init__(self, rate, burst):
        self.rate, self.burst = rate, burst
        self.tokens, self.at = float(burst), time.monotonic()

    def take(self):
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class Front:
    def __init__(self, rate, burst, repo, tags_in_metadata, asg_rate, asg_burst):
        self.bucket = Bucket(rate, burst)
        # EC2's bucket for non-mutating actions: 100, refilled at 20 per second.
        self.ec2_bucket = Bucket(20, 100)
        # Auto Scaling's one bucket per account: its rates are not published.
        self.asg_bucket = Bucket(asg_rate, asg_burst)
        self.repo = repo
        self.tags_in_metadata = tags_in_metadata
        self.calls = []  # (monotonic time, secret id, allowed)
        self.ec2_calls = []  # (monotonic time, instance id, allowed)
        self.asg_calls = []  # (monotonic time, instance id, allowed)
        self.completed = set()  # instances whose launch was completed with CONTINUE

    def tags(self, instance):
        return {
            "Service": "svc" + instance.removeprefix("i-"),
            "Environment": "test",
            "Repository": self.repo,
        }

    def imds(self, instance, method, path):
        if method == "PUT" and path == "/latest/api/token":
            return 200, "token-" + instance
        if path.startswith("/latest/meta-data/tags/instance") and not self.tags_in_metadata:
            return 404, ""
        answers = {
            "/latest/meta-data/instance-id": instance,
            "/latest/meta-data/placement/region": "us-east-1",
            "/latest/meta-data/tags/instance": "\n".join(self.tags(instance)),
        }
        for key, value in self.tags(instance).items():
            answers["/latest/meta-data/tags/instance/" + key] = value
        if path in answers:
            return 200, answers[path]
        return 404, ""

    def describe_tags(self, body):
        """EC2's Query protocol: the tags of the instance the filter names, or throttled."""
        form = dict(pair.split("=", 1) for pair in body.decode().split("&") if "=" in pair)
        instance = form.get("Filter.1.Value.1", "")
        allowed = self.ec2_bucket.take()
        self.ec2_calls.append((time.monotonic(), instance, allowed))
        if not allowed:
            return 503, ("<Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>"
                         "Request limit exceeded.</Message></Error></Errors><RequestID>r"
                         "</RequestID></Response>")
        items = "".join(
            f"<item><resourceId>{instance}</resourceId><resourceType>instance</resourceType>"
            f"<key>{key}</key><value>{value}</value></item>"
            for key, value in self.tags(instance).items()
        )
        return 200, ('<DescribeTagsResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">'
                     f"<requestId>r</requestId><tagSet>{items}</tagSet></DescribeTagsResponse>")

    def lifecycle(self, body):
        """Auto Scaling's Query protocol: CompleteLifecycleAction, or throttled."""
        form = dict(pair.split("=", 1) for pair in body.decode().split("&") if "=" in pair)
        namespace = "http://autoscaling.amazonaws.com/doc/2011-01-01/"
        action, instance = form.get("Action", ""), form.get("InstanceId", "")
        allowed = self.asg_bucket.take()
        self.asg_calls.append((time.monotonic(), instance, allowed))
        if not allowed:
            return 400, (f'<ErrorResponse xmlns="{namespace}"><Error><Type>Sender</Type>'
                         "<Code>Throttling</Code><Message>Rate exceeded</Message></Error>"
                         "<RequestId>r</RequestId></ErrorResponse>")
        if action == "CompleteLifecycleAction" and form.get("LifecycleActionResult") == "CONTINUE":
            self.completed.add(instance)
        return 200, (f'<{action}Response xmlns="{namespace}"><{action}Result/><ResponseMetadata>'
                     f"<RequestId>r</RequestId></ResponseMetadata></{action}Response>")

    def secrets(self, target, body):
        if not target.endswith("GetSecretValue"):
            return 400, json.dumps({"__type": "InvalidRequestException", "message": target})
        secret = json.loads(body or b"{}").get("SecretId", "")
        allowed = self.bucket.take()
        self.calls.append((time.monotonic(), secret, allowed))
        if not allowed:
            return 400, json.dumps({"__type": "ThrottlingException", "message": "Rate exceeded"})
        value = json.dumps({"APP_SECRET": "value-of-" + secret, "PORT": "8080"})
        return 200, json.dumps({
            "ARN": f"arn:aws:secretsmanager:us-east-1:123456789012:secret:{secret}-AbCdEf",
            "Name": secret, "SecretString": value, "VersionId": "v-1",
            "VersionStages": ["AWSCURRENT"], "CreatedDate": 1.7e9,
        })

    async def serve(self, reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        key, value = line.split(":", 1)
                        headers[key.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                if path.startswith("/i-"):
                    instance, _, rest = path[1:].partition("/")
                    status, text = self.imds(instance, method, "/" + rest)
                    kind = "text/plain"
                elif body.startswith(b"Action=DescribeTags"):
                    status, text = self.describe_tags(body)
                    kind = "text/xml"
                elif body.startswith(b"Action="):
                    status, text = self.lifecycle(body)
                    kind = "text/xml"
                else:
                    status, text = self.secrets(headers.get("x-amz-target", ""), body)
                    kind = "application/x-amz-json-1.1"
                data = text.encode()
                writer.write(
                    f"HTTP/1.1 {status} X\r\nContent-Type: {kind}\r\n"
                    f"Content-Length: {len(data)}\r\n\r\n".encode() + data
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()


def origin_of(url):
    """scheme://host:port of a repository URL: where its deploy token may go."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def write_configs(work, agents, tags_in_metadata, hook_command, token_file, repo):
    """Each agent's config. With a hook command (argv before the config's path), the service
    the boot starts is `bootagent lifecycle complete`, which answers the launch hook: in exec
    mode that is how a launch is completed."""
    configs = []
    for n in range(agents):
        home = os.path.join(work, f"agent{n:04d}")
        # Named after the run's state directory, which bench/fleet removes with them.
        run = os.path.join("/dev/shm", os.path.basename(os.path.dirname(work)) + f"-{n:04d}")
        os.makedirs(run, exist_ok=True)
        os.makedirs(home, exist_ok=True)
        path = os.path.join(home, "config.toml")
        command = ["/bin/true"]
        if hook_command:
            command = hook_command(f"i-{n:04d}") + [
                "--config", path, "lifecycle", "complete", "--hook", "launching",
                "--result", "continue"]
        with open(path, "w") as f:
            # A real instance has its own IMDS and its own CPU. Here a thousand agents share two
            # cores and one front that serves every IMDS: the wider deadline keeps that sharing
            # from passing for an IMDS failure.
            f.write(f"""[identity]
tag_wait = "2s"
imds_deadline = "60s"
describe_tags_fallback = {"false" if tags_in_metadata else "true"}
[paths]
run_dir = "{run}"
state_dir = "{home}/state"
[git]
dir = "{home}/srv/{{service}}"
token = "{token_file}"
token_hosts = ["{origin_of(repo)}"]
[service]
manager = "exec"
user = "nobody"
command = {json.dumps(command)}
[lifecycle]
group = "fleet"
# Each Auto Scaling call, its retries included: a fleet's launch waits its turn.
timeout = "10m"
""")
        configs.append((f"i-{n:04d}", path))
    return configs


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--agents", type=int, default=300)
    parser.add_argument("--rate", type=float, default=20)
    parser.add_argument("--burst", type=float, default=20)
    parser.add_argument("--bin", required=True)
    parser.add_argument("--repo", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--svg", required=True)
    parser.add_argument("--tags", choices=["metadata", "describe-tags"], default="metadata")
    parser.add_argument("--hook-rate", type=float, default=0,
                        help="complete a launch hook against Auto Scaling at this rate")
    parser.add_argument("--hook-burst", type=float, default=20)
    parser.add_argument("--git-token-file", default="", help="the git server's token, if any")
    parser.add_argument("--seed", default="", help="a seed (bootagent prepare) each agent's "
                        "image holds")
    args = parser.parse_args()

    in_metadata = args.tags == "metadata"
    front = Front(args.rate, args.burst, args.repo, in_metadata, args.hook_rate, args.hook_burst)
    server = await asyncio.start_server(front.serve, "127.0.0.1", 0, backlog=4096)
    port = server.sockets[0].getsockname()[1]

    def environment(instance):
        return {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "AWS_EC2_METADATA_SERVICE_ENDPOINT": f"http://127.0.0.1:{port}/{instance}",
            "AWS_ENDPOINT_URL_SECRETS_MANAGER": f"http://127.0.0.1:{port}",
            "AWS_ENDPOINT_URL_EC2": f"http://127.0.0.1:{port}",
            "AWS_ENDPOINT_URL_AUTO_SCALING": f"http://127.0.0.1:{port}",
            "AWS_ACCESS_KEY_ID": "fleet", "AWS_SECRET_ACCESS_KEY": "fleet",
        }

    # The service's environment is only its env file: env(1) hands it the endpoints.
    hook_command = None
    if args.hook_rate:
        def hook_command(instance):
            pairs = [f"{k}={v}" for k, v in environment(instance).items() if k != "PATH"]
            return ["/usr/bin/env"] + pairs + [args.bin]
    configs = write_configs(args.work, args.agents, in_metadata, hook_command,
                            args.git_token_file, args.repo)
    if args.seed:
        # Each image's own copy, as baked: hard links, since planting only reads it.
        for _, config in configs:
            state = os.path.join(os.path.dirname(config), "state")
            shutil.copytree(args.seed, os.path.join(state, "seed"), copy_function=os.link)

    # The agents start together, as a launch's instances do: each is spawned holding back on a
    # shared lock that the harness holds, and all go when it lets go. Spawned one after another
    # from this process, a thousand agents took 16 s to exist, during which this process (the
    # front every IMDS and Secrets Manager call goes to) answered nothing; that stall counted
    # in the makespan, though no instance waits for its siblings to be launched.
    gate_path = os.path.join(args.work, "start.lock")
    gate = open(gate_path, "w")
    fcntl.flock(gate, fcntl.LOCK_EX)
    processes = {}
    for instance, config in configs:
        env = environment(instance) | {"BOOTAGENT_CONFIG": config}
        # GNU time measures the agent from outside, and forks from a process of ~1 MiB: the
        # peak RSS a child inherits from its parent before exec counts in its own, and this
        # harness (Python) is 20 MiB.
        process = subprocess.Popen(
            ["/usr/bin/flock", "--shared", gate_path,
             "/usr/bin/time", "-f", "%M %U %S", "-o", config + ".time", args.bin, "boot"],
            env=env, stdout=subprocess.DEVNULL, stderr=open(config + ".log", "w"),
        )
        processes[process.pid] = instance
    started = time.monotonic()
    fcntl.flock(gate, fcntl.LOCK_UN)
    gate.close()

    ended = {}
    loop = asyncio.get_running_loop()
    while len(ended) < len(processes):
        pid, status = await loop.run_in_executor(None, os.waitpid, -1, 0)
        if pid in processes:
            ended[pid] = (time.monotonic(), os.waitstatus_to_exitcode(status))
    makespan = max(at for at, _ in ended.values()) - started
    server.close()

    durations = sorted(at - started for at, _ in ended.values())
    failures = sum(1 for _, code in ended.values() if code != 0)
    measured = []
    for _, config in configs:
        with open(config + ".time") as f:
            kib, user, system = f.read().split()[-3:]
        measured.append((int(kib) / 1024, float(user) + float(system)))
    rss = sorted(m[0] for m in measured)
    cpu = sorted(m[1] for m in measured)
    # Each bucket lets (N - burst) / rate seconds pass at the least; the slower one bounds the run.
    ideal = max(0.0, (args.agents - args.burst) / args.rate)
    if args.hook_rate:
        ideal = max(ideal, (args.agents - args.hook_burst) / args.hook_rate)

    def pct(values, p):
        return values[min(len(values) - 1, int(len(values) * p))]

    def calls_of(calls, name):
        """Rows for one API: calls (throttled), and attempts per agent."""
        per_caller = {}
        for _, caller, _ in calls:
            per_caller[caller] = per_caller.get(caller, 0) + 1
        tries = sorted(per_caller.values()) or [0]
        refused = sum(1 for _, _, allowed in calls if not allowed)
        print(f"| {name} calls | {len(calls)} ({refused} throttled) |")
        print(f"| {name} attempts per agent | p50 {pct(tries, .5)}, p99 {pct(tries, .99)}, "
              f"max {tries[-1]} |")

    print("| measure | value |\n|---|---|")
    print(f"| agents | {args.agents} |")
    print(f"| Secrets Manager bucket | {args.rate:g}/s, burst {args.burst:g} |")
    print(f"| makespan | {makespan:.1f} s (ideal, the slower bucket's (N - burst) / rate: {ideal:.1f} s; "
          f"{makespan / ideal if ideal else 0:.2f}×) |")
    print(f"| failed boots | {failures} |")
    calls_of(front.calls, "GetSecretValue")
    if front.calls:
        # The first agent's first call: until then no agent had got through its start (identity,
        # clients, the checkout beside), since a thousand processes sharing two cores each get a
        # thousandth of a core, where an instance has its own.
        first = min(at for at, _, _ in front.calls) - started
        print(f"| first GetSecretValue call of any agent | {first:.1f} s after the start |")
    if front.ec2_calls:
        print("| DescribeTags bucket | 20/s, burst 100 |")
        calls_of(front.ec2_calls, "DescribeTags")
    if front.asg_calls:
        print(f"| Auto Scaling bucket | {args.hook_rate:g}/s, burst {args.hook_burst:g} |")
        calls_of(front.asg_calls, "CompleteLifecycleAction")
        print(f"| launches completed with CONTINUE | {len(front.completed)} |")
    print(f"| boot time | p50 {pct(durations, .5):.1f} s, p99 {pct(durations, .99):.1f} s, "
          f"max {durations[-1]:.1f} s |")
    print(f"| CPU per agent (user + system) | p50 {pct(cpu, .5) * 1000:.0f} ms, "
          f"max {cpu[-1] * 1000:.0f} ms |")
    print(f"| peak RSS per agent (GNU time) | p50 {pct(rss, .5):.1f} MiB, max {rss[-1]:.1f} MiB |")
    gits = [status_of(config).get("git") or {} for _, config in configs]
    received = sorted(git.get("received_bytes", 0) for git in gits)
    seeded = sum(1 for git in gits if git.get("seed"))
    print(f"| git: received per checkout | p50 {pct(received, .5):,} bytes, "
          f"max {received[-1]:,} bytes |")
    print(f"| git: checkouts that started from the seed | {seeded} of {len(gits)} |")
    failed = [(pid, code) for pid, (_, code) in ended.items() if code != 0]
    if failed:
        pid, code = failed[0]
        instance = processes[pid]
        config = dict(configs)[instance]
        with open(config + ".log") as log:
            last = log.read().strip().splitlines()[-1:]
        print(f"\nfirst failure: {instance} exited {code}: {' '.join(last)}")
    write_svg(args.svg, front.calls, started, makespan)


def status_of(config):
    """The status.json the agent of `config` wrote, or {} when it wrote none."""
    with open(config) as f:
        run_dir = re.search(r'^run_dir = "(.*)"$', f.read(), re.M).group(1)
    try:
        with open(os.path.join(run_dir, "status.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def write_svg(path, calls, started, makespan):
    """Calls per second over the run: allowed in grey, throttled in red, stacked."""
    seconds = int(makespan) + 1
    ok, throttled = [0] * seconds, [0] * seconds
    for at, _, allowed in calls:
        second = min(seconds - 1, max(0, int(at - started)))
        (ok if allowed else throttled)[second] += 1
    peak = max(a + b for a, b in zip(ok, throttled)) or 1
    width, height, bar = 800, 300, 800 / seconds
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 40}">',
             f'<text x="4" y="14" font-size="12">GetSecretValue calls per second over {seconds} s '
             f'(grey: answered, red: throttled; peak {peak}/s)</text>']
    for second in range(seconds):
        x = second * bar
        ok_h = ok[second] / peak * height
        th_h = throttled[second] / peak * height
        parts.append(f'<rect x="{x:.1f}" y="{20 + height - ok_h:.1f}" width="{bar:.1f}" '
                     f'height="{ok_h:.1f}" fill="#999"/>')
        parts.append(f'<rect x="{x:.1f}" y="{20 + height - ok_h - th_h:.1f}" width="{bar:.1f}" '
                     f'height="{th_h:.1f}" fill="#d33"/>')
    parts.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(parts) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
