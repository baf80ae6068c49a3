//! Staging has no network unless the staging egress rules allow it (like Cloud Foundry's
//! staging security groups). Traffic goes only to a listener in a namespace the test made.

mod common;
#[path = "../../containers/tests/common/peer.rs"]
mod peer;

use common::{app, buildpack, Fixture};
use kiln_containers::{NetOutRule, Protocol};

#[tokio::test]
async fn staging_egress_is_denied_by_default_and_allowed_by_the_staging_rules() {
    let fx = Fixture::new(54).await;
    let peer = peer::Peer::new(54);
    peer.serve(9054);
    let bp = buildpack(
        &fx.path("fetcher"),
        &[
            ("detect", "#!/bin/sh\necho fetcher\n"),
            ("compile", &format!("#!/bin/sh\nif nc -w 3 {} 9054 </dev/null | grep -q pong; then echo reached; else echo unreachable; fi\n", peer.address)),
        ],
    );
    let src = app(&fx.path("app"), &[("x", "1")]);
    let mut req = fx.request("closed", &src);
    req.buildpacks = vec![bp.display().to_string()];
    let (r, lines) = fx.stage(&common::builtin_dir(), req.clone()).await;
    r.expect("stages");
    assert!(lines.iter().any(|l| l.text == "unreachable"), "{lines:?}");

    req.id = "open".into();
    req.droplet_out = fx.path("open.tgz");
    req.egress = vec![NetOutRule {
        protocol: Protocol::Tcp,
        networks: vec![peer.address.to_string()],
        ports: vec![(9054, 9054)],
    }];
    let (r, lines) = fx.stage(&common::builtin_dir(), req).await;
    r.expect("stages");
    assert!(lines.iter().any(|l| l.text == "reached"), "{lines:?}");
}
