//! Checkouts over smart HTTP with a deploy token from a secret, through `git http-backend`
//! behind Basic authentication.

mod support;

use support::*;

struct Setup {
    name: String,
    repo: SampleRepo,
    token: String,
    server: GitHttp,
}

/// A service whose secret holds the deploy token (a canary) beside an ordinary variable.
fn setup() -> Setup {
    let name = unique("http");
    let repo = SampleRepo::create(&name);
    let token = canary();
    let server = GitHttp::start("deploy", &token);
    create_secret(
        &format!("{name}_env_prod"),
        &serde_json::json!({ "GIT_TOKEN": token, "APP": "1" }).to_string(),
    );
    Setup {
        name,
        repo,
        token,
        server,
    }
}

impl Setup {
    fn imds(&self) -> Imds {
        Imds::for_service(&self.name, "prod", &self.server.repo_url(&self.name))
    }
}

const WITH_TOKEN: &str = "[git]\ntoken = \"secret:GIT_TOKEN\"\nusername = \"deploy\"\n";

#[test]
fn a_deploy_token_from_a_secret_checks_out_and_never_lands_anywhere() {
    let setup = setup();
    let instance = Instance::exec_mode(WITH_TOKEN);
    let run = instance.run(&setup.imds(), &["boot"]);
    run.expect(0);
    instance.assert_runs_without(&setup.name, &setup.repo.commits["prod"], "GIT_TOKEN");
    instance.assert_left_nowhere(&setup.token, &run);

    let (doctor, git) = instance.doctor_check(&setup.imds(), "git");
    assert_eq!(git["verdict"], "ok", "{git}");
    instance.assert_no_canary(&setup.token, &doctor);
}

#[test]
fn a_wrong_token_is_refused_with_a_clear_message() {
    let setup = setup();
    create_secret(
        &format!("{}-wrong", setup.name),
        &serde_json::json!({ "T": "not-the-token" }).to_string(),
    );
    let instance = Instance::exec_mode(&format!(
        "[git]\ntoken = \"secret:WRONG\"\nusername = \"deploy\"\n\
         [secrets.vars]\nWRONG = \"{}-wrong#T\"\n",
        setup.name
    ));
    let run = instance.run(&setup.imds(), &["boot"]);
    run.expect(7)
        .stderr_has("refused access")
        .stderr_has("the remote refused the token");
    instance.assert_no_canary("not-the-token", &run);
}

#[test]
fn a_protected_remote_without_a_token_names_the_setting() {
    let setup = setup();
    let instance = Instance::exec_mode("");
    instance
        .run(&setup.imds(), &["boot"])
        .expect(7)
        .stderr_has("none are configured (git.token)");
}

#[test]
fn a_token_variable_no_secret_defines_is_named() {
    let setup = setup();
    let instance = Instance::exec_mode("[git]\ntoken = \"secret:NOPE\"\n");
    instance
        .run(&setup.imds(), &["boot"])
        .expect(7)
        .stderr_has("git.token names secret variable NOPE, which no secret defines");
}
