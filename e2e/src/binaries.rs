//! Where the programs under test live: the member server (ferrokv, or etcd for comparison),
//! the operator, Debian's `etcdctl` and `kubectl`.

use std::path::PathBuf;

/// Environment variable naming the server binary to test, e.g. `/usr/bin/etcd`.
pub const SERVER_ENV: &str = "FERROKV_E2E_SERVER";

/// Environment variable naming the etcdctl binary; defaults to [`DEFAULT_ETCDCTL`].
pub const ETCDCTL_ENV: &str = "FERROKV_E2E_ETCDCTL";

/// Debian's etcdctl (package `etcd-client`).
pub const DEFAULT_ETCDCTL: &str = "/usr/bin/etcdctl";

/// Environment variable naming the kubectl binary; defaults to [`DEFAULT_KUBECTL`].
pub const KUBECTL_ENV: &str = "FERROKV_E2E_KUBECTL";

/// Debian's kubectl (package `kubectl`).
pub const DEFAULT_KUBECTL: &str = "/usr/bin/kubectl";

/// The member server binary: `$FERROKV_E2E_SERVER` if set, else the `ferrokv` binary built into
/// the same target directory (and profile) as the running test executable, which honours
/// `CARGO_TARGET_DIR` without having to read it.
///
/// Panics with instructions when the binary does not exist: every e2e test needs it.
pub fn server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os(SERVER_ENV) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "{SERVER_ENV}={} does not name a file",
            path.display()
        );
        return path;
    }
    let path = profile_dir().join("ferrokv");
    assert!(
        path.is_file(),
        "the ferrokv server binary {} does not exist: run `cargo build -p ferrokv-node` first \
         (with the same CARGO_TARGET_DIR), or set {SERVER_ENV}=/usr/bin/etcd to test against etcd",
        path.display()
    );
    path
}

/// Whether the server under test is etcd rather than ferrokv, judged by the binary's file name:
/// for tests of what only ferrokv has (its own subcommands, its on-disk format), which skip
/// themselves against etcd.
pub fn server_is_etcd() -> bool {
    is_etcd(&server_binary())
}

/// Whether `server` names an etcd binary (`etcd`, `etcd-3.4`, ...).
pub fn is_etcd(server: &std::path::Path) -> bool {
    server
        .file_name()
        .is_some_and(|name| name.to_string_lossy().starts_with("etcd"))
}

/// The etcdctl binary: `$FERROKV_E2E_ETCDCTL` if set, else `/usr/bin/etcdctl`.
pub fn etcdctl_binary() -> PathBuf {
    std::env::var_os(ETCDCTL_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_ETCDCTL))
}

/// The `ferrokv-operator` binary built into the same target directory (and profile) as the
/// running test executable. Panics with instructions when it does not exist.
pub fn operator_binary() -> PathBuf {
    let path = profile_dir().join("ferrokv-operator");
    assert!(
        path.is_file(),
        "the operator binary {} does not exist: run `cargo build -p ferrokv-operator` first \
         (with the same CARGO_TARGET_DIR)",
        path.display()
    );
    path
}

/// The kubectl binary: `$FERROKV_E2E_KUBECTL` if set, else `/usr/bin/kubectl`.
pub fn kubectl_binary() -> PathBuf {
    std::env::var_os(KUBECTL_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_KUBECTL))
}

/// `<target dir>/<profile>` of the running executable. Test executables live in
/// `<target dir>/<profile>/deps/`, binaries directly in `<target dir>/<profile>/`.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("path of the running executable");
    let mut dir = exe
        .parent()
        .expect("executable has a parent directory")
        .to_path_buf();
    if dir.file_name().is_some_and(|name| name == "deps") {
        dir.pop();
    }
    dir
}
