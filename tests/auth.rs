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
