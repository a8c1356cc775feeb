//! How the triad is started on one machine: the flags of each daemon, given where it keeps its
//! files and which certificate it uses. `drover up` and the integration tests start clusters
//! from these, so a flag is renamed in one place.

use std::path::Path;

use ssntp::tls::TlsPaths;

/// `--cacert`, `--cert` and `--key` for a certificate.
pub fn tls_args(paths: &TlsPaths) -> Vec<String> {
    let mut args =
        vec!["--cacert".into(), paths.ca.display().to_string(), "--cert".into(), paths.cert.display().to_string()];
    if let Some(key) = &paths.key {
        args.extend(["--key".into(), key.display().to_string()]);
    }
    args
}

/// A scheduler listening on `listen`.
pub fn scheduler_args(listen: &str, tls: &TlsPaths) -> Vec<String> {
    let mut args = vec!["--listen".to_owned(), listen.to_owned()];
    args.extend(tls_args(tls));
    args
}

/// A controller of the scheduler at `server`, keeping its database and state under `dir`,
/// serving the API on `api_listen` with the certificate `api_cert`.
pub fn controller_args(server: &str, dir: &Path, api_listen: &str, api_cert: &Path, tls: &TlsPaths) -> Vec<String> {
    let mut args = vec![
        "--server".to_owned(),
        server.to_owned(),
        "--db".to_owned(),
        dir.join("controller.redb").display().to_string(),
        "--state-dir".to_owned(),
        dir.join("controller").display().to_string(),
        "--api-listen".to_owned(),
        api_listen.to_owned(),
        "--api-cert".to_owned(),
        api_cert.display().to_string(),
    ];
    args.extend(tls_args(tls));
    args
}

/// A launcher of the scheduler at `server` keeping its state in `state_dir`.
pub fn launcher_args(server: &str, state_dir: &Path, tls: &TlsPaths) -> Vec<String> {
    let mut args =
        vec!["--server".to_owned(), server.to_owned(), "--state-dir".to_owned(), state_dir.display().to_string()];
    args.extend(tls_args(tls));
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_daemon_gets_its_certificate_and_its_files() {
        let tls =
            TlsPaths { ca: "/p/ca.pem".into(), cert: "/p/c.pem".into(), key: Some("/p/c-key.pem".into()), crl: None };
        let c = controller_args("127.0.0.1:1", Path::new("/w"), "127.0.0.1:2", Path::new("/p/api.pem"), &tls);
        assert_eq!(
            c.join(" "),
            "--server 127.0.0.1:1 --db /w/controller.redb --state-dir /w/controller --api-listen 127.0.0.1:2 \
             --api-cert /p/api.pem --cacert /p/ca.pem --cert /p/c.pem --key /p/c-key.pem"
        );
        assert_eq!(scheduler_args("h:1", &tls)[..2], ["--listen", "h:1"]);
        assert_eq!(launcher_args("h:1", Path::new("/s"), &tls)[..4], ["--server", "h:1", "--state-dir", "/s"]);
    }
}
