//! Two sites whose replication link goes through the test kit's fault
//! proxy (the sync, continuous and journal crash tests cut, slow and heal
//! it).

use offsite_testkit::TestSite;
use offsite_testkit::proxy::{Direction, FaultProxy};

use super::*;

/// Sites `site-a` and `site-b` with [`FAST_REPLICATION`] timers plus
/// `extra` (`key = value` lines of `[replication]`), B authorizing A, A
/// reaching B through a fault proxy; both keep their listeners' ports
/// across restarts.
pub fn proxied_pair(extra: &str) -> (TestSite, TestSite, FaultProxy) {
    let body = format!("{FAST_REPLICATION}{extra}");
    let mut a = TestSite::init(bin(), "site-a");
    set_replication_config(&a, &body);
    a.start();
    let mut b = TestSite::init(bin(), "site-b");
    set_replication_config(&b, &body);
    b.start();
    keep_listen_port(&a);
    keep_listen_port(&b);
    let listen: std::net::SocketAddr = site_addr(&b, "listen").parse().expect("B's address");
    let proxy = FaultProxy::start(listen);
    pin_at(&a, &b, &proxy.addr().to_string());
    pin(&b, &a);
    authorize_primary(&b, "site-a", None);
    (a, b, proxy)
}

/// The link goes silent both ways and refuses new connections.
pub fn cut_link(proxy: &FaultProxy) {
    let f = proxy.faults();
    f.refuse_new(true);
    f.stall(Direction::ClientToServer);
    f.stall(Direction::ServerToClient);
}

/// The link is whole again, at full speed.
pub fn heal_link(proxy: &FaultProxy) {
    let f = proxy.faults();
    f.reset_all();
    f.unstall(Direction::ClientToServer);
    f.unstall(Direction::ServerToClient);
    f.refuse_new(false);
    f.set_bandwidth(Direction::ClientToServer, None);
}
