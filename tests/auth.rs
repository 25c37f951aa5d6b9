//! Credentials against a real registry: htpasswd Basic auth with every
//! credential source, and the Bearer token flow against the registry's
//! `auth: token` mode with a small token issuer (JWTs signed by `openssl`).

mod common;

use std::fs;

use common::*;

#[test]
fn basic_auth_from_every_credential_source() {
    let reg = registry_with(Auth::Basic {
        user: USER.into(),
        password: PASSWORD.into(),
    });
    let uri = format!("ocimodel://{}/models/mnist:v1", reg.addr);
    let work = tempfile::tempdir().unwrap();
    let config_dir = work.path().join("docker");
    fs::create_dir(&config_dir).unwrap();
    let config_file = config_dir.join("config.json");
    fs::write(&config_file, docker_config(USER, PASSWORD, &reg.addr)).unwrap();
    // username/password form, and a URL-shaped key.
    let podman_file = work.path().join("auth.json");
    fs::write(
        &podman_file,
        format!(
            r#"{{"auths":{{"http://{}/":{{"username":"{USER}","password":"{PASSWORD}"}}}}}}"#,
            reg.addr
        ),
    )
    .unwrap();

    type Setup<'a> = Box<dyn Fn(Ocimodel) -> Ocimodel + 'a>;
    let cases: Vec<(&str, Setup, Vec<String>)> = vec![
        (
            "DOCKER_CONFIG",
            Box::new(|o: Ocimodel| o.env("DOCKER_CONFIG", &config_dir)),
            vec![],
        ),
        (
            "REGISTRY_AUTH_FILE",
            Box::new(|o: Ocimodel| o.env("REGISTRY_AUTH_FILE", &podman_file)),
            vec![],
        ),
        (
            "KSERVE_OCI_DOCKER_CONFIG",
            Box::new(|o: Ocimodel| o.env("KSERVE_OCI_DOCKER_CONFIG", &config_file)),
            vec![],
        ),
        (
            "OCIMODEL_DOCKER_CONFIG_JSON",
            Box::new(|o: Ocimodel| {
                o.env(
                    "OCIMODEL_DOCKER_CONFIG_JSON",
                    docker_config(USER, PASSWORD, &reg.addr),
                )
            }),
            vec![],
        ),
        (
            "--auth-file",
            Box::new(|o| o),
            vec!["--auth-file".into(), podman_file.display().to_string()],
        ),
    ];
    for (name, setup, extra) in cases {
        let dest = work.path().join(name.trim_start_matches('-'));
        let mut args = vec!["pull".to_string()];
        args.extend(extra);
        args.push(uri.clone());
        args.push(dest.display().to_string());
        let run = setup(Ocimodel::new().insecure(&reg)).run(&args);
        assert_eq!(run.code(), 0, "{name}: {}", run.stderr());
        assert_eq!(sha256_file(&dest.join(MNIST_TITLE)), MNIST_SHA256, "{name}");
    }

    // Sources merge: an inline config for another registry does not hide the file.
    let dest = work.path().join("merged");
    Ocimodel::new()
        .insecure(&reg)
        .env(
            "OCIMODEL_DOCKER_CONFIG_JSON",
            docker_config("x", "y", "other.example:5000"),
        )
        .env("DOCKER_CONFIG", &config_dir)
        .run(&[&uri, dest.to_str().unwrap()])
        .assert_ok();
}

#[test]
fn basic_auth_failures_are_specific() {
    let reg = registry_with(Auth::Basic {
        user: USER.into(),
        password: PASSWORD.into(),
    });
    let uri = format!("{}/models/mnist:v1", reg.addr);
    let work = tempfile::tempdir().unwrap();

    let dest = work.path().join("wrong");
    Ocimodel::new()
        .insecure(&reg)
        .env(
            "OCIMODEL_DOCKER_CONFIG_JSON",
            docker_config(USER, "wrong", &reg.addr),
        )
        .run(&[&uri, dest.to_str().unwrap()])
        .assert_fails_with(&[
            "401 Unauthorized",
            &format!("registry {}", reg.addr),
            &format!("user '{USER}'"),
            "OCIMODEL_DOCKER_CONFIG_JSON",
            "check the username and password",
        ]);
    assert!(model_files(&dest).is_empty());

    let dest = work.path().join("none");
    Ocimodel::new()
        .insecure(&reg)
        .run(&[&uri, dest.to_str().unwrap()])
        .assert_fails_with(&["requires authentication", &reg.addr, "no credentials"]);

    Ocimodel::new()
        .insecure(&reg)
        .env("OCIMODEL_DOCKER_CONFIG_JSON", "{not json")
        .run(&[&uri, dest.to_str().unwrap()])
        .assert_fails_with(&["OCIMODEL_DOCKER_CONFIG_JSON is not a valid docker config JSON"]);
}

#[test]
fn bearer_token_flow() {
    let issuer = TokenServer::start(|repo| repo.to_string());
    let reg = registry_with(Auth::Token {
        realm: issuer.realm.clone(),
        cert_pem: issuer.cert.clone(),
    });
    let uri = format!("{}/models/mnist:v1", reg.addr);
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("models");
    Ocimodel::new()
        .insecure(&reg)
        .env(
            "OCIMODEL_DOCKER_CONFIG_JSON",
            docker_config(USER, PASSWORD, &reg.addr),
        )
        .run(&[&uri, dest.to_str().unwrap()])
        .assert_ok();
    assert_eq!(sha256_file(&dest.join(MNIST_TITLE)), MNIST_SHA256);
    let requests = issuer.requests.lock().unwrap().clone();
    assert_eq!(
        requests,
        vec![(
            "test-registry".to_string(),
            "repository:models/mnist:pull".to_string()
        )],
        "one token, for exactly the pull scope of this repository, reused for every request"
    );

    // Wrong password: the token service refuses, and the message says so.
    let dest = work.path().join("wrong");
    Ocimodel::new()
        .insecure(&reg)
        .env(
            "OCIMODEL_DOCKER_CONFIG_JSON",
            docker_config(USER, "nope", &reg.addr),
        )
        .run(&[&uri, dest.to_str().unwrap()])
        .assert_fails_with(&[
            "token service",
            &issuer.realm,
            &reg.addr,
            "rejected the credentials",
            USER,
        ]);
    assert!(model_files(&dest).is_empty());
}

#[test]
fn bearer_token_for_another_repository_is_refused_by_the_registry() {
    // An issuer that grants a different repository than asked: the registry
    // must refuse the token, and ocimodel must report it, not loop.
    let issuer = TokenServer::start(|_| "models/other".to_string());
    let reg = registry_with(Auth::Token {
        realm: issuer.realm.clone(),
        cert_pem: issuer.cert.clone(),
    });
    let dest = tempfile::tempdir().unwrap();
    Ocimodel::new()
        .insecure(&reg)
        .env(
            "OCIMODEL_DOCKER_CONFIG_JSON",
            docker_config(USER, PASSWORD, &reg.addr),
        )
        .run(&[
            &format!("{}/models/mnist:v1", reg.addr),
            dest.path().to_str().unwrap(),
        ])
        .assert_fails_with(&[
            "401 Unauthorized",
            &reg.addr,
            "refused the token",
            "repository:models/mnist:pull",
        ]);
    assert!(model_files(dest.path()).is_empty());
}

/// A docker credential helper on `bin`: the protocol of
/// docker-credential-helpers' client exactly. `get`, the server address on
/// stdin with no newline; `{"ServerURL","Username","Secret"}` on stdout for
/// a server it knows (`answers`: server, user, secret), else
/// "credentials not found in native keychain" on stdout and exit 1. It
/// records its argument and what it read in `bin/<name>.calls` and
/// `bin/<name>.stdin`.
fn helper(bin: &std::path::Path, name: &str, answers: &[(&str, &str, &str)]) {
    let dir = bin.display();
    let mut cases = String::new();
    for (server, user, secret) in answers {
        cases.push_str(&format!(
            "  '{server}') printf '{{\"ServerURL\":\"%s\",\"Username\":\"{user}\",\"Secret\":\"{secret}\"}}\\n' \"$server\" ;;\n"
        ));
    }
    let script = format!(
        "#!/bin/sh\necho \"$1\" >> '{dir}/{name}.calls'\n[ \"$1\" = get ] || {{ echo \"unknown action: $1\"; exit 1; }}\ncat > '{dir}/{name}.stdin'\nserver=$(cat '{dir}/{name}.stdin')\ncase \"$server\" in\n{cases}  *) echo 'credentials not found in native keychain'; exit 1 ;;\nesac\n"
    );
    raw_helper(bin, name, &script);
}

/// A helper whose whole script is `script`.
fn raw_helper(bin: &std::path::Path, name: &str, script: &str) {
    use std::os::unix::fs::PermissionsExt;
    let path = bin.join(format!("docker-credential-{name}"));
    fs::write(&path, script).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// `bin` first on the test's PATH.
fn path_with(bin: &std::path::Path) -> String {
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// credHelpers[host] > credsStore > auths, as docker reads a config; the
/// helper is run once, as `get`, with exactly the host on stdin; its user
/// is named when the registry refuses what it gave.
#[test]
fn credential_helpers_answer_as_docker_runs_them() {
    let reg = registry_with(Auth::Basic {
        user: USER.into(),
        password: PASSWORD.into(),
    });
    let uri = format!("{}/models/mnist:v1", reg.addr);
    let work = tempfile::tempdir().unwrap();
    let bin = work.path().join("bin");
    fs::create_dir(&bin).unwrap();
    helper(&bin, "good", &[(&reg.addr, USER, PASSWORD)]);
    helper(&bin, "bad", &[(&reg.addr, USER, "wrong")]);
    helper(&bin, "empty", &[]);
    let wrong_auth = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("{USER}:wrong"),
    );
    let right_auth = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("{USER}:{PASSWORD}"),
    );
    let a = &reg.addr;
    let cases = [
        (
            "store",
            format!(r#"{{"auths":{{"{a}":{{}}}},"credsStore":"good"}}"#),
        ),
        (
            "helpers-first",
            format!(
                r#"{{"auths":{{"{a}":{{"auth":"{wrong_auth}"}}}},"credsStore":"bad","credHelpers":{{"{a}":"good"}}}}"#
            ),
        ),
        (
            "store-before-auths",
            format!(r#"{{"auths":{{"{a}":{{"auth":"{wrong_auth}"}}}},"credsStore":"good"}}"#),
        ),
        (
            "not-found-leaves-auths",
            format!(
                r#"{{"auths":{{"{a}":{{"auth":"{right_auth}"}}}},"credHelpers":{{"{a}":"empty"}}}}"#
            ),
        ),
    ];
    for (name, config) in cases {
        let config_dir = work.path().join(format!("{name}-config"));
        fs::create_dir(&config_dir).unwrap();
        fs::write(config_dir.join("config.json"), config).unwrap();
        for f in ["good.calls", "good.stdin"] {
            let _ = fs::remove_file(bin.join(f));
        }
        let dest = work.path().join(name);
        let run = Ocimodel::new()
            .insecure(&reg)
            .env("PATH", path_with(&bin))
            .env("DOCKER_CONFIG", &config_dir)
            .run(&[&uri, dest.to_str().unwrap()]);
        assert_eq!(run.code(), 0, "{name}: {}", run.stderr());
        assert_eq!(sha256_file(&dest.join(MNIST_TITLE)), MNIST_SHA256, "{name}");
        if name != "not-found-leaves-auths" {
            assert_eq!(
                fs::read_to_string(bin.join("good.calls")).unwrap(),
                "get\n",
                "{name}: one `get` per run"
            );
            assert_eq!(
                fs::read(bin.join("good.stdin")).unwrap(),
                reg.addr.as_bytes(),
                "{name}: the host on stdin, no newline"
            );
        } else {
            assert_eq!(
                fs::read_to_string(bin.join("empty.calls")).unwrap(),
                "get\n"
            );
        }
    }

    // Credentials a helper gave that the registry refuses: the helper is named.
    let config_dir = work.path().join("bad-config");
    fs::create_dir(&config_dir).unwrap();
    fs::write(config_dir.join("config.json"), r#"{"credsStore":"bad"}"#).unwrap();
    let dest = work.path().join("bad");
    Ocimodel::new()
        .insecure(&reg)
        .env("PATH", path_with(&bin))
        .env("DOCKER_CONFIG", &config_dir)
        .run(&[&uri, dest.to_str().unwrap()])
        .assert_fails_with(&[
            "401 Unauthorized",
            &format!("user '{USER}'"),
            "credential helper docker-credential-bad (credsStore in",
        ]);
    assert!(model_files(&dest).is_empty());
}

/// A helper docker would run but ocimodel cannot use is skipped, and the
/// "no credentials" error says which and why: not on PATH (Docker
/// Desktop's config on a machine without it), failed, hung (killed at the
/// timeout), or printed no JSON. `auths` beside it still answer.
#[test]
fn skipped_credential_helpers_say_why() {
    let reg = registry_with(Auth::Basic {
        user: USER.into(),
        password: PASSWORD.into(),
    });
    let uri = format!("{}/models/mnist:v1", reg.addr);
    let work = tempfile::tempdir().unwrap();
    let bin = work.path().join("bin");
    fs::create_dir(&bin).unwrap();
    raw_helper(
        &bin,
        "broken",
        "#!/bin/sh\ncat >/dev/null\necho 'error: the keyring is locked'\nexit 1\n",
    );
    raw_helper(&bin, "hung", "#!/bin/sh\nexec sleep 120\n");
    raw_helper(&bin, "chatty", "#!/bin/sh\ncat >/dev/null\necho 'hello'\n");
    assert!(
        !std::env::split_paths(&path_with(&bin))
            .any(|d| d.join("docker-credential-desktop").exists()),
        "this test needs a PATH without docker-credential-desktop"
    );
    let docker_desktop = r#"{"auths":{"https://index.docker.io/v1/":{}},"credsStore":"desktop","currentContext":"desktop-linux"}"#;
    let cases: [(&str, String, &[&str]); 4] = [
        (
            "desktop",
            docker_desktop.to_string(),
            &["credential helper docker-credential-desktop (credsStore in", "skipped: docker-credential-desktop not found on PATH"],
        ),
        (
            "broken",
            format!(r#"{{"credHelpers":{{"{}":"broken"}}}}"#, reg.addr),
            &["docker-credential-broken (credHelpers in", "docker-credential-broken get failed (exit status: 1): error: the keyring is locked"],
        ),
        (
            "hung",
            r#"{"credsStore":"hung"}"#.to_string(),
            &["docker-credential-hung did not answer within 1s"],
        ),
        (
            "chatty",
            r#"{"credsStore":"chatty"}"#.to_string(),
            &["docker-credential-chatty get printed no credentials JSON"],
        ),
    ];
    for (name, config, needles) in cases {
        let config_dir = work.path().join(format!("{name}-config"));
        fs::create_dir(&config_dir).unwrap();
        fs::write(config_dir.join("config.json"), &config).unwrap();
        let dest = work.path().join(name);
        let run = Ocimodel::new()
            .insecure(&reg)
            .env("PATH", path_with(&bin))
            .env("DOCKER_CONFIG", &config_dir)
            .env("OCIMODEL_CREDENTIAL_HELPER_TIMEOUT", "1")
            .run(&[&uri, dest.to_str().unwrap()]);
        let mut all = vec!["requires authentication", "no credentials"];
        all.extend_from_slice(needles);
        run.assert_fails_with(&all);
        assert!(model_files(&dest).is_empty(), "{name}");
    }

    // The same Docker Desktop config with a usable `auths` entry: the pull
    // works, and the skipped helper is still named, once, as a warning.
    let config_dir = work.path().join("desktop-and-auths");
    fs::create_dir(&config_dir).unwrap();
    fs::write(
        config_dir.join("config.json"),
        format!(
            r#"{{"auths":{{"{}":{{"username":"{USER}","password":"{PASSWORD}"}}}},"credsStore":"desktop"}}"#,
            reg.addr
        ),
    )
    .unwrap();
    let dest = work.path().join("desktop-and-auths-dest");
    let run = Ocimodel::new()
        .insecure(&reg)
        .env("PATH", path_with(&bin))
        .env("DOCKER_CONFIG", &config_dir)
        .run(&[&uri, dest.to_str().unwrap()]);
    run.assert_ok();
    assert_eq!(
        run.stderr()
            .matches("docker-credential-desktop not found on PATH")
            .count(),
        1,
        "{}",
        run.stderr()
    );
}

/// A helper's `<token>` user name means its secret is an identity token
/// (docker's protocol): traded at the token service, never sent as a password.
#[test]
fn an_identity_token_from_a_credential_helper() {
    let issuer = TokenServer::start(|repo| repo.to_string());
    let reg = registry_with(Auth::Token {
        realm: issuer.realm.clone(),
        cert_pem: issuer.cert.clone(),
    });
    let work = tempfile::tempdir().unwrap();
    let bin = work.path().join("bin");
    fs::create_dir(&bin).unwrap();
    helper(&bin, "tok", &[(&reg.addr, "<token>", IDENTITY_TOKEN)]);
    let config_dir = work.path().join("docker");
    fs::create_dir(&config_dir).unwrap();
    fs::write(config_dir.join("config.json"), r#"{"credsStore":"tok"}"#).unwrap();
    let dest = work.path().join("m");
    Ocimodel::new()
        .insecure(&reg)
        .env("PATH", path_with(&bin))
        .env("DOCKER_CONFIG", &config_dir)
        .run(&[
            &format!("{}/models/mnist:v1", reg.addr),
            dest.to_str().unwrap(),
        ])
        .assert_ok();
    assert_eq!(sha256_file(&dest.join(MNIST_TITLE)), MNIST_SHA256);
}

/// A real helper: Debian's docker-credential-pass (docker-credential-helpers)
/// over `pass` with a passphrase-less GnuPG key made for the test, as
/// `docker login` with `"credsStore": "pass"` leaves it.
#[test]
fn a_real_credential_helper_docker_credential_pass() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let reg = registry_with(Auth::Basic {
        user: USER.into(),
        password: PASSWORD.into(),
    });
    let work = tempfile::tempdir().unwrap();
    let gnupg = work.path().join("gnupg");
    fs::create_dir(&gnupg).unwrap();
    fs::set_permissions(&gnupg, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let store = work.path().join("password-store");
    let run = |args: &[&str], stdin: &str| {
        let mut child = Command::new(args[0])
            .args(&args[1..])
            .env("GNUPGHOME", &gnupg)
            .env("PASSWORD_STORE_DIR", &store)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e} (scripts/test.sh installs it)", args[0]));
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(
        &[
            "gpg",
            "--batch",
            "--passphrase",
            "",
            "--quick-gen-key",
            "ocimodel test <test@example.invalid>",
            "default",
            "default",
            "never",
        ],
        "",
    );
    let keys = run(&["gpg", "--list-keys", "--with-colons"], "");
    let fpr = keys
        .lines()
        .find_map(|l| {
            l.strip_prefix("fpr:")
                .map(|r| r.trim_matches(':').to_string())
        })
        .expect("the key's fingerprint");
    run(&["pass", "init", &fpr], "");
    run(
        &["docker-credential-pass", "store"],
        &format!(
            r#"{{"ServerURL":"{}","Username":"{USER}","Secret":"{PASSWORD}"}}"#,
            reg.addr
        ),
    );
    let config_dir = work.path().join("docker");
    fs::create_dir(&config_dir).unwrap();
    fs::write(
        config_dir.join("config.json"),
        r#"{"auths":{},"credsStore":"pass"}"#,
    )
    .unwrap();
    let dest = work.path().join("m");
    let pulled = Ocimodel::new()
        .insecure(&reg)
        .env("DOCKER_CONFIG", &config_dir)
        .env("GNUPGHOME", &gnupg)
        .env("PASSWORD_STORE_DIR", &store)
        .run(&[
            &format!("{}/models/mnist:v1", reg.addr),
            dest.to_str().unwrap(),
        ]);
    let _ = Command::new("gpgconf")
        .args(["--kill", "gpg-agent"])
        .env("GNUPGHOME", &gnupg)
        .status();
    pulled.assert_ok();
    assert_eq!(sha256_file(&dest.join(MNIST_TITLE)), MNIST_SHA256);
}
