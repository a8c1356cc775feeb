//! The controller's command line: the configuration a package installs parses.

/// `deploy/etc/drover/controller.toml` is one the controller takes.
#[test]
fn the_packaged_configuration_parses() {
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/etc/drover/controller.toml");
    let argv = ["drover-controller", "--config", file].map(std::ffi::OsString::from).to_vec();
    let args = ssntp::config_file::parse::<drover_controller::shell::Args>(argv).unwrap();
    assert_eq!(args.servers, ["127.0.0.1:8888"]);
}
