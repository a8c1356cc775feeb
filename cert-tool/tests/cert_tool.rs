//! drover-cert: what it writes, what it refuses, and that its certificates carry the roles the
//! protocol reads back.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;

use drover_cert::{create_ca, issue, revoke, show, verify, CertError, IssueRequest};
use ssntp::role::roles_from_cert_der;
use ssntp::Role;

fn req(role: Role, name: &str, hosts: &[&str]) -> IssueRequest {
    IssueRequest {
        role,
        name: name.into(),
        hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
        ips: vec![],
        orgs: vec![],
        days: 30,
        uuid: None,
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn every_role_round_trips_through_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    create_ca(dir.path(), "Test", 10).unwrap();
    assert_eq!(mode(&dir.path().join("ca-key.pem")), 0o600);
    for (role, _, _) in Role::TABLE {
        let issued = issue(dir.path(), &req(role, "n1", &["localhost", "10.1.2.3"])).unwrap();
        assert_eq!(mode(&issued.key), 0o600, "{role}");
        assert_eq!(issued.cert.file_name().unwrap().to_str().unwrap(), format!("{role}-n1.pem"));
        let certs = ssntp::tls::load_certs(&issued.cert).unwrap();
        assert_eq!(roles_from_cert_der(&certs[0]).unwrap(), role);
        let info = verify(dir.path(), &issued.cert).unwrap_or_else(|e| panic!("{role}: {e}"));
        assert_eq!(info.roles, role);
        let server = role.intersects(Role::SCHEDULER | Role::SERVER);
        assert_eq!(info.usages, if server { vec!["serverAuth"] } else { vec!["clientAuth"] }, "{role}");
        assert!(info.sans.contains(&"DNS:localhost".to_owned()) && info.sans.contains(&"IP:10.1.2.3".to_owned()));
        assert_eq!(info.spki_sha256.len(), 32 * 3 - 1);
        let identity = ssntp::role::identity_from_cert_der(&certs[0]).unwrap();
        assert_eq!(identity.is_some(), !server, "{role}: clients are issued to a UUID, servers are not");
        assert_eq!(info.identity, identity);
    }
}

#[test]
fn a_client_certificate_names_the_uuid_asked_for_and_users_are_not_controllers() {
    let dir = tempfile::tempdir().unwrap();
    create_ca(dir.path(), "Test", 10).unwrap();
    let node = ssntp::Uuid::from_bytes([5; 16]);
    let issued = issue(dir.path(), &IssueRequest { uuid: Some(node), ..req(Role::AGENT, "n1", &[]) }).unwrap();
    let certs = ssntp::tls::load_certs(&issued.cert).unwrap();
    assert_eq!(ssntp::role::identity_from_cert_der(&certs[0]).unwrap(), Some(node));
    assert!(show(&issued.cert).unwrap().to_string().contains(&format!("identity:    {node}")));
    let two = issue(dir.path(), &req(Role::AGENT, "n2", &[])).unwrap();
    let other = ssntp::role::identity_from_cert_der(&ssntp::tls::load_certs(&two.cert).unwrap()[0]).unwrap();
    assert!(other.is_some_and(|u| u != node), "a new UUID each");
    let tenant = IssueRequest { orgs: vec!["acme".into()], ..req(Role::CONTROLLER, "alice", &[]) };
    let err = issue(dir.path(), &tenant).unwrap_err();
    assert!(err.to_string().contains("--role user"), "{err}");
    let user = issue(dir.path(), &IssueRequest { role: Role::USER, ..tenant }).unwrap();
    let facts = ssntp::role::cert_facts(&ssntp::tls::load_certs(&user.cert).unwrap()[0]).unwrap();
    assert_eq!((facts.roles, facts.names_tenants), (Role::USER, true));
}

#[test]
fn refusals_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let err = issue(dir.path(), &req(Role::AGENT, "n1", &[])).unwrap_err();
    assert!(matches!(err, CertError::NoCa(_)), "{err}");
    assert!(err.to_string().contains("drover-cert ca --dir"), "{err}");
    create_ca(dir.path(), "Test", 10).unwrap();
    assert!(matches!(create_ca(dir.path(), "Again", 10).unwrap_err(), CertError::CaExists(_)));
    assert!(matches!(issue(dir.path(), &req(Role::AGENT, "n1", &["bad host"])).unwrap_err(), CertError::BadHost(_)));
    assert!(matches!(issue(dir.path(), &req(Role::AGENT, "../escape", &[])).unwrap_err(), CertError::BadName(_)));
    assert!(matches!(
        issue(dir.path(), &req(Role::AGENT | Role::NETAGENT, "two", &[])).unwrap_err(),
        CertError::Invalid(_)
    ));
    let mut zero = req(Role::AGENT, "n1", &[]);
    zero.days = 0;
    assert!(matches!(issue(dir.path(), &zero).unwrap_err(), CertError::BadDays(0)));
}

#[test]
fn revoked_expired_and_foreign_certificates_fail_verification() {
    let dir = tempfile::tempdir().unwrap();
    create_ca(dir.path(), "Test", 10).unwrap();
    let node = issue(dir.path(), &req(Role::AGENT, "node", &[])).unwrap();
    let other = issue(dir.path(), &req(Role::AGENT, "other", &[])).unwrap();
    revoke(dir.path(), &node.cert).unwrap();
    revoke(dir.path(), &node.cert).unwrap(); // twice is harmless
    let err = verify(dir.path(), &node.cert).unwrap_err();
    assert!(err.to_string().contains("Revoked"), "{err}");
    verify(dir.path(), &other.cert).expect("others stay valid");
    assert_eq!(std::fs::read_to_string(dir.path().join("revoked.txt")).unwrap().lines().count(), 1);

    let foreign_dir = tempfile::tempdir().unwrap();
    create_ca(foreign_dir.path(), "Other", 10).unwrap();
    let foreign = issue(foreign_dir.path(), &req(Role::AGENT, "x", &[])).unwrap();
    assert!(verify(dir.path(), &foreign.cert).is_err());
    assert!(matches!(revoke(dir.path(), &foreign.cert).unwrap_err(), CertError::Invalid(_)));

    let mut spec = drover_cert::CertSpec::from_request(&req(Role::AGENT, "old", &[])).unwrap();
    spec.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(10);
    spec.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    let expired = drover_cert::issue_spec(dir.path(), &spec, "agent-old").unwrap();
    let err = verify(dir.path(), &expired.cert).unwrap_err();
    assert!(err.to_string().contains("expired"), "{err}");
    assert_eq!(show(&expired.cert).unwrap().roles, Role::AGENT);
}

#[test]
fn binary_reports_errors_and_exits_non_zero() {
    let bin = env!("CARGO_BIN_EXE_drover-cert");
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let pki = pki.to_str().unwrap();
    let run = |args: &[&str]| Command::new(bin).args(args).output().unwrap();
    assert!(run(&["ca", "--dir", pki]).status.success());
    let out = run(&["issue", "--dir", pki, "--role", "scheduler", "--name", "s"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs --host or --ip"));
    let out = run(&["issue", "--dir", pki, "--role", "wizard", "--name", "s"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown role"));
    assert!(run(&["issue", "--dir", pki, "--role", "agent", "--name", "n1", "--org", "tenant-a"]).status.success());
    let out = run(&["show", &format!("{pki}/agent-n1.pem")]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("role:        agent") && text.contains("tenant-a"), "{text}");
    let out = run(&["issue", "--dir", pki, "--role", "controller", "--name", "alice", "--org", "acme"]);
    assert!(!out.status.success(), "a tenant's certificate is not a controller's");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--role user"));
    let node = "0f0e0d0c-0b0a-4908-8706-050403020100";
    assert!(run(&["issue", "--dir", pki, "--role", "user", "--name", "alice", "--org", "acme"]).status.success());
    assert!(run(&["issue", "--dir", pki, "--role", "agent", "--name", "n2", "--uuid", node]).status.success());
    let out = run(&["show", &format!("{pki}/agent-n2.pem")]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("identity:    {node}")));
    assert_eq!(run(&["issue", "--no-such-flag"]).status.code(), Some(64), "usage errors are 64, as in every binary");
    assert_eq!(run(&["--help"]).status.code(), Some(0));
    let help = String::from_utf8_lossy(&run(&["--help"]).stdout).into_owned();
    assert!(help.contains("-anchor-cert"), "--help maps ciao-cert's flags");
}

#[test]
fn several_tenants_survive_in_the_organization() {
    let dir = tempfile::tempdir().unwrap();
    create_ca(dir.path(), "Test", 10).unwrap();
    let mut request = req(Role::USER, "alice", &[]);
    request.orgs = vec!["acme".into(), "globex".into()];
    let issued = issue(dir.path(), &request).unwrap();
    assert_eq!(show(&issued.cert).unwrap().orgs, vec!["acme".to_owned(), "globex".to_owned()]);
    request.orgs = vec!["a,b".into()];
    assert!(matches!(issue(dir.path(), &request), Err(CertError::BadName(_))), "a tenant is a name");
}
