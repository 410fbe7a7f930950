//! `backup cluster create` against real nodes: each node a `backup serve`
//! process on 127.0.0.1 with its own configuration, state, storage, node
//! name, role, users and token; the coordinator a separate process with
//! its own storage and no keys, trusting each node by its pinned
//! certificate fingerprint. Faults are real: killed servers, failing
//! components, stalled transfers, a wrong fingerprint, an impostor.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::util::{command_component, names_in, run, signal, wait_for, Ops, Out, Running};

/// How long a server start, a stop or a cluster run may take.
const PATIENCE: Duration = Duration::from_secs(120);

/// One node: an initialised appliance serving its backups.
struct Node {
    ops: Ops,
    name: String,
    role: &'static str,
    server: Option<Running>,
    url: String,
    fingerprint: String,
    /// Holds the line `backup token create` printed on the node.
    token_file: PathBuf,
}

impl Node {
    /// Sets up and starts node `name` with `role`; `extra` adds components.
    fn start(name: &str, role: &'static str, extra: &str) -> Node {
        let ops = Ops::new("");
        let text = ops.config_text(extra).replace(
            "node = \"gw-ops\"",
            &format!("node = \"{name}\"\nrole = \"{role}\"\ncluster = \"edge\""),
        );
        fs::write(&ops.config, text).unwrap();
        ops.init();
        run(ops
            .cmd_with(
                &ops.config,
                None,
                &["user", "add", "coordinator", "--role", "admin"],
            )
            .env("BACKUP_USER_PASSWORD", "coordinator-password-7f3e"))
        .expect(0);
        let token = ops.run(&["token", "create", "coordinator", "cluster"]);
        token.expect(0);
        let token_file = ops.dir().join("node.token");
        fs::write(&token_file, token.stdout.trim()).unwrap();
        let server = ops.spawn(&["serve", "--listen", "127.0.0.1:0"]);
        let (address, fingerprint) = wait_for(PATIENCE, "backup serve announcing itself", || {
            let err = server.stderr_so_far();
            let line = |prefix: &str| {
                err.lines()
                    .find_map(|l| l.strip_prefix(prefix))
                    .map(|s| s.trim().trim_end_matches('/').to_string())
            };
            line("listening on https://").zip(line("fingerprint: "))
        });
        Node {
            ops,
            name: name.into(),
            role,
            server: Some(server),
            url: format!("https://{address}"),
            fingerprint,
            token_file,
        }
    }

    /// `[[cluster.node]]` naming this node.
    fn entry(&self) -> String {
        self.entry_as(&self.name, self.role, &self.fingerprint)
    }

    /// `[[cluster.node]]` pointing at this node's service and token, under
    /// another name, role or pinned fingerprint.
    fn entry_as(&self, name: &str, role: &str, fingerprint: &str) -> String {
        format!(
            "[[cluster.node]]\nname = \"{name}\"\nrole = \"{role}\"\nurl = \"{}\"\nfingerprint = \"{fingerprint}\"\ntoken_file = {:?}\n\n",
            self.url,
            self.token_file.display().to_string()
        )
    }

    /// Kills the server outright (no graceful stop).
    fn kill(&mut self) {
        if let Some(server) = self.server.take() {
            signal(server.pid(), "-KILL");
            let _ = server.wait(PATIENCE);
        }
    }

    /// The images this node's own storage holds (the copies it keeps).
    fn stored_images(&self) -> Vec<String> {
        names_in(&self.ops.store)
            .into_iter()
            .filter(|n| n.ends_with(".bkp"))
            .collect()
    }
}

/// A coordinator with its own storage and no keys, backing up `nodes`.
fn coordinator(nodes: &str, timeout_secs: u64) -> Ops {
    let ops = Ops::new("");
    let text = ops
        .config_text(&format!(
            "[cluster]\nname = \"edge\"\ntimeout_secs = {timeout_secs}\n\n{nodes}"
        ))
        .replace("node = \"gw-ops\"", "node = \"coordinator\"");
    fs::write(&ops.config, text).unwrap();
    ops
}

/// `backup --json cluster create` on the coordinator, expecting `code`.
fn cluster_create(coord: &Ops, code: i32) -> (Out, Value) {
    let out = coord.run(&["--json", "cluster", "create"]);
    out.expect(code);
    let report = out.json();
    (out, report)
}

/// The coordinator's storage holds exactly `expected` (no staging object,
/// no unfinished upload).
fn assert_store_holds(coord: &Ops, expected: &[&str]) {
    assert_eq!(
        names_in(&coord.store),
        expected,
        "the coordinator's storage"
    );
}

/// `tar -tf BUNDLE` with GNU tar.
fn tar_list(bundle: &Path) -> Vec<String> {
    crate::util::require_gnu_tar();
    let out = run(Command::new("tar")
        .arg("-tf")
        .arg(bundle)
        .stdin(Stdio::null()));
    out.expect(0);
    out.stdout.lines().map(str::to_string).collect()
}

/// The manifest inside a bundle, read with GNU tar.
fn manifest_of(bundle: &Path) -> Value {
    let out = Command::new("tar")
        .arg("-xOf")
        .arg(bundle)
        .arg("cluster-manifest.json")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The bytes at a manifest entry's offset and size, checked against its
/// SHA-256, written to `out`.
fn member_by_offset(bundle: &Path, node: &Value, out: &Path) {
    let offset = node["offset"].as_u64().expect("an offset");
    let size = node["size"].as_u64().expect("a size");
    let mut file = fs::File::open(bundle).unwrap();
    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(offset)).unwrap();
    let mut data = vec![0u8; size as usize];
    file.read_exact(&mut data).unwrap();
    fs::write(out, &data).unwrap();
    assert_eq!(
        crate::util::sha256_file(out),
        node["sha256"].as_str().unwrap(),
        "the bytes at {offset}..{} are the image the manifest describes",
        offset + size
    );
}

fn node_entry<'a>(manifest: &'a Value, name: &str) -> &'a Value {
    manifest["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == name)
        .unwrap_or_else(|| panic!("no node {name} in {manifest:#}"))
}

/// The last `cluster.create` record of the coordinator's audit log.
fn last_cluster_audit(coord: &Ops) -> Value {
    coord
        .audit()
        .into_iter()
        .rev()
        .find(|r| r["operation"] == "cluster.create")
        .expect("the cluster run is audited")
}

#[test]
fn every_node_is_pulled_into_one_bundle_that_tar_lists_and_each_image_restores_only_on_its_node() {
    let ctl = Node::start("ctl-1", "control", "");
    let d1 = Node::start("data-1", "data", "");
    let d2 = Node::start("data-2", "data", "");
    let coord = coordinator(&format!("{}{}{}", d2.entry(), d1.entry(), ctl.entry()), 60);

    let (_, report) = cluster_create(&coord, 0);
    assert_eq!(report["outcome"], "success", "{report:#}");
    let bundle_name = report["bundle"].as_str().unwrap().to_string();
    assert!(
        bundle_name.starts_with(&format!("{}edge.", crate::util::PREFIX))
            && bundle_name.ends_with(".tar"),
        "{bundle_name}"
    );
    assert_store_holds(&coord, &[&bundle_name]);
    let bundle = coord.store.join(&bundle_name);
    assert_eq!(
        fs::metadata(&bundle).unwrap().len(),
        report["size"].as_u64().unwrap()
    );

    // GNU tar lists the manifest first, then one role-named image per
    // node, control first.
    let members = tar_list(&bundle);
    assert_eq!(members.len(), 4, "{members:?}");
    assert_eq!(members[0], "cluster-manifest.json");
    assert!(members[1].ends_with("_ctl-1_control.bkp"), "{members:?}");
    let data: Vec<&String> = members[2..].iter().collect();
    assert!(
        data.iter().any(|m| m.ends_with("_data-1_data.bkp")),
        "{members:?}"
    );
    assert!(
        data.iter().any(|m| m.ends_with("_data-2_data.bkp")),
        "{members:?}"
    );

    let manifest = manifest_of(&bundle);
    assert_eq!(manifest["cluster"], "edge");
    assert_eq!(manifest["outcome"], "success");
    assert_eq!(manifest["nodes"][0]["name"], "ctl-1");
    assert_eq!(manifest["nodes"][0]["order"], 1);
    for node in [&ctl, &d1, &d2] {
        let entry = node_entry(&manifest, &node.name);
        assert_eq!(entry["outcome"], "success", "{entry:#}");
        assert_eq!(entry["role"], node.role);
        assert_eq!(entry["order"], if node.role == "control" { 1 } else { 2 });
        let image = entry["image"].as_str().unwrap();
        assert!(members.iter().any(|m| m == image), "{image} in {members:?}");
        // The member at its offset is the image, byte for byte: it
        // verifies on its own node, and GNU tar extracts the same bytes.
        let file = coord.dir().join(image);
        member_by_offset(&bundle, entry, &file);
        let extracted = coord.dir().join(format!("tar-{image}"));
        let tar_out = Command::new("tar")
            .arg("-xOf")
            .arg(&bundle)
            .arg(image)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        fs::write(&extracted, tar_out.stdout).unwrap();
        assert_eq!(
            crate::util::sha256_file(&extracted),
            entry["sha256"].as_str().unwrap()
        );
        let path = file.display().to_string();
        node.ops.run(&["verify", &path]).expect(0);
    }

    // An image restores on its own node only: restore checks identity.
    let data_image = coord
        .dir()
        .join(node_entry(&manifest, "data-1")["image"].as_str().unwrap());
    let target = ctl.ops.dir().join("inspect");
    let refused = ctl.ops.run(&[
        "restore",
        &data_image.display().to_string(),
        "--target",
        &target.display().to_string(),
        "--yes",
    ]);
    refused.expect_failure().mentions("data-1");
    let own = d1.ops.dir().join("inspect");
    d1.ops
        .run(&[
            "restore",
            &data_image.display().to_string(),
            "--target",
            &own.display().to_string(),
            "--yes",
        ])
        .expect(0);

    // Status and audit of the coordinator.
    let status = coord.status();
    assert_eq!(
        status["last_backup"]["operation"], "cluster backup",
        "{status:#}"
    );
    assert_eq!(status["last_backup"]["outcome"], "success");
    assert_eq!(status["last_backup"]["image"], bundle_name.as_str());
    let audit = last_cluster_audit(&coord);
    assert_eq!(audit["outcome"], "success", "{audit:#}");
    assert_eq!(audit["target"], bundle_name.as_str());
    assert_eq!(audit["bytes"], report["size"]);
    // The coordinator was never initialised: it holds no key.
    assert!(!coord.state.join("master.key").exists());
}

#[test]
fn failing_data_nodes_are_recorded_with_their_reasons_and_the_others_are_bundled() {
    let ctl = Node::start("ctl-1", "control", "");
    let broken = command_component("broken", &["sh", "-c", "echo half; exit 7"], "");
    let d1 = Node::start("data-1", "data", &format!("[[component]]\n{broken}"));
    let mut d2 = Node::start("data-2", "data", "");
    let nodes = [
        ctl.entry(),
        d1.entry(),
        d2.entry(),
        // data-3 pins data-1's certificate but its url reaches ctl-1.
        ctl.entry_as("data-3", "data", &d1.fingerprint),
        // data-4 is reached at data-1's address: another node answers.
        d1.entry_as("data-4", "data", &d1.fingerprint),
    ]
    .concat();
    let coord = coordinator(&nodes, 60);
    d2.kill();

    let (_, report) = cluster_create(&coord, 3);
    assert_eq!(report["outcome"], "partial", "{report:#}");
    let bundle_name = report["bundle"].as_str().unwrap().to_string();
    assert_store_holds(&coord, &[&bundle_name]);
    let bundle = coord.store.join(&bundle_name);
    let members = tar_list(&bundle);
    assert_eq!(members.len(), 3, "manifest, ctl-1 and data-1: {members:?}");
    assert!(members[1].ends_with("_ctl-1_control.bkp"), "{members:?}");
    assert!(members[2].ends_with("_data-1_data.bkp"), "{members:?}");

    let manifest = manifest_of(&bundle);
    assert_eq!(manifest["outcome"], "partial");
    assert_eq!(node_entry(&manifest, "ctl-1")["outcome"], "success");
    let partial = node_entry(&manifest, "data-1");
    assert_eq!(partial["outcome"], "partial", "{partial:#}");
    assert!(
        partial["error"].as_str().unwrap().contains("broken"),
        "{partial:#}"
    );
    let file = coord.dir().join("data-1.bkp");
    member_by_offset(&bundle, partial, &file);
    d1.ops
        .run(&["verify", &file.display().to_string()])
        .expect(0);

    let killed = node_entry(&manifest, "data-2");
    assert_eq!(killed["outcome"], "failed");
    assert!(
        killed.get("image").is_none() && killed.get("offset").is_none(),
        "{killed:#}"
    );
    let reason = killed["error"].as_str().unwrap();
    assert!(reason.contains("cannot connect"), "{reason}");

    let pinned = node_entry(&manifest, "data-3");
    let reason = pinned["error"].as_str().unwrap();
    assert!(
        reason.contains(&ctl.fingerprint) && reason.contains(&d1.fingerprint),
        "expected and seen fingerprints: {reason}"
    );

    let impostor = node_entry(&manifest, "data-4");
    let reason = impostor["error"].as_str().unwrap();
    assert!(
        reason.contains("\"data-1\"") && reason.contains("\"data-4\""),
        "{reason}"
    );

    // Status and audit carry the outcome and every reason.
    let status = coord.status();
    let last = &status["last_backup"];
    assert_eq!(last["outcome"], "partial", "{status:#}");
    let why = last["reason"].as_str().unwrap();
    for name in ["data-1", "data-2", "data-3", "data-4"] {
        assert!(why.contains(name), "{name} in {why}");
    }
    let audit = last_cluster_audit(&coord);
    assert_eq!(audit["outcome"], "partial", "{audit:#}");
    assert!(
        audit["error"].as_str().unwrap().contains("data-2"),
        "{audit:#}"
    );
    // Nothing secret in what the coordinator wrote or printed.
    let token = fs::read_to_string(&d1.token_file).unwrap();
    let secret = token.split_once(':').unwrap().1.trim();
    for file in crate::util::files_under(&coord.state) {
        let text = String::from_utf8_lossy(&fs::read(&file).unwrap()).into_owned();
        assert!(
            !text.contains(secret),
            "{} holds a token secret",
            file.display()
        );
    }
}

#[test]
fn a_dead_control_node_cancels_the_backup_before_any_node_starts_and_publishes_nothing() {
    let mut ctl = Node::start("ctl-1", "control", "");
    let d1 = Node::start("data-1", "data", "");
    let coord = coordinator(&format!("{}{}", ctl.entry(), d1.entry()), 60);
    ctl.kill();

    let (out, report) = cluster_create(&coord, 1);
    assert_eq!(report["outcome"], "failed", "{}", out.dump());
    assert!(report["bundle"].is_null(), "{report:#}");
    let reason = report["reason"].as_str().unwrap();
    assert!(
        reason.contains("ctl-1") && reason.contains("control"),
        "{reason}"
    );
    let data = &report["nodes"][1];
    assert_eq!(data["name"], "data-1", "{report:#}");
    assert_eq!(data["outcome"], "failed", "{report:#}");
    assert!(
        data["error"].as_str().unwrap().contains("cancelled"),
        "{report:#}"
    );
    assert_store_holds(&coord, &[]);
    assert!(d1.stored_images().is_empty(), "data-1 was not backed up");

    let status = coord.status();
    assert_eq!(status["last_backup"]["outcome"], "failed", "{status:#}");
    assert_eq!(last_cluster_audit(&coord)["outcome"], "failed");

    // Without --json: the reason on stderr, exit 1.
    let human = coord.run(&["cluster", "create"]);
    human.expect(1).mentions("ctl-1");
    assert_store_holds(&coord, &[]);
}

#[test]
fn a_stalled_node_times_out_and_a_node_killed_mid_transfer_fails_without_leaving_staging() {
    let ctl = Node::start("ctl-1", "control", "");
    // Both send part of their image, then go silent.
    let slow = command_component(
        "slow",
        &["sh", "-c", "head -c 4000000 /dev/urandom; sleep 30"],
        "",
    );
    let stalls = Node::start("data-1", "data", &format!("[[component]]\n{slow}"));
    let mut dies = Node::start("data-2", "data", &format!("[[component]]\n{slow}"));
    let coord = coordinator(
        &format!("{}{}{}", ctl.entry(), stalls.entry(), dies.entry()),
        8,
    );
    let run = coord.spawn(&["--json", "cluster", "create"]);
    // Kill data-2's server once its image is being staged.
    wait_for(PATIENCE, "data-2's transfer", || {
        names_in(&coord.store)
            .iter()
            .any(|n| n.contains("data-2.staging") && n.contains(".partial-"))
            .then_some(())
    });
    dies.kill();
    let out = run.wait(PATIENCE);
    out.expect(3);
    let report = out.json();
    assert_eq!(report["outcome"], "partial", "{report:#}");
    let bundle_name = report["bundle"].as_str().unwrap().to_string();
    assert_store_holds(&coord, &[&bundle_name]);
    let manifest = manifest_of(&coord.store.join(&bundle_name));
    let stalled = node_entry(&manifest, "data-1");
    assert_eq!(stalled["outcome"], "failed");
    assert!(
        stalled["error"].as_str().unwrap().contains("timeout_secs"),
        "{stalled:#}"
    );
    let broken = node_entry(&manifest, "data-2");
    assert_eq!(broken["outcome"], "failed");
    assert!(
        broken["error"].as_str().unwrap().contains("broke off"),
        "{broken:#}"
    );
    assert_eq!(node_entry(&manifest, "ctl-1")["outcome"], "success");
}

#[test]
fn a_node_already_running_a_backup_is_recorded_as_busy() {
    let ctl = Node::start("ctl-1", "control", "");
    let slow = command_component("slow", &["sh", "-c", "sleep 20"], "");
    let busy = Node::start("data-1", "data", &format!("[[component]]\n{slow}"));
    let coord = coordinator(&format!("{}{}", ctl.entry(), busy.entry()), 60);
    let _running = busy.ops.spawn(&["create"]);
    wait_for(PATIENCE, "data-1's own backup", || {
        (busy.ops.status()["state"] == "in progress").then_some(())
    });

    let (_, report) = cluster_create(&coord, 3);
    let entry = &report["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "data-1")
        .cloned()
        .unwrap();
    assert_eq!(entry["outcome"], "failed");
    assert!(
        entry["error"].as_str().unwrap().contains("running"),
        "{entry:#}"
    );
    let bundle_name = report["bundle"].as_str().unwrap();
    assert_store_holds(&coord, &[bundle_name]);
}

#[test]
fn the_daemon_backs_up_the_cluster_when_the_schedule_says_so() {
    let ctl = Node::start("ctl-1", "control", "");
    let d1 = Node::start("data-1", "data", "");
    let coord = coordinator(
        &format!(
            "{}{}[schedule]\ncron = [\"* * * * *\"]\ncluster = true\n",
            ctl.entry(),
            d1.entry()
        ),
        60,
    );
    let daemon = coord.spawn(&["daemon"]);
    // The next minute boundary, then the run.
    let bundle = wait_for(
        Duration::from_secs(150),
        "a scheduled cluster backup",
        || {
            names_in(&coord.store)
                .into_iter()
                .find(|n| n.ends_with(".tar"))
        },
    );
    let audit = wait_for(PATIENCE, "its audit record", || {
        coord
            .audit()
            .into_iter()
            .find(|r| r["operation"] == "cluster.create")
    });
    signal(daemon.pid(), "-TERM");
    daemon.wait(PATIENCE).expect(0);
    assert_eq!(audit["outcome"], "success", "{audit:#}");
    assert_eq!(audit["trigger"], "scheduled", "{audit:#}");
    assert_eq!(audit["target"], bundle.as_str());
    let members = tar_list(&coord.store.join(&bundle));
    assert_eq!(members.len(), 3, "{members:?}");
    assert_eq!(coord.status()["last_backup"]["operation"], "cluster backup");
}

#[test]
fn a_coordinator_that_is_itself_a_node_backs_itself_up_through_the_engine() {
    let d1 = Node::start("data-1", "data", "");
    // ctl-1 coordinates: an initialised appliance, no `backup serve` of
    // its own; its entry's url, fingerprint and token are never used.
    let ctl = Ops::new("");
    let own = format!(
        "[[cluster.node]]\nname = \"ctl-1\"\nrole = \"control\"\nurl = \"https://127.0.0.1:9\"\n\
         fingerprint = \"sha256:{}\"\ntoken_file = \"/nonexistent\"\n\n",
        "0".repeat(64)
    );
    let text = ctl
        .config_text(&format!(
            "[cluster]\nname = \"edge\"\n\n{own}{}",
            d1.entry()
        ))
        .replace(
            "node = \"gw-ops\"",
            "node = \"ctl-1\"\nrole = \"control\"\ncluster = \"edge\"",
        );
    fs::write(&ctl.config, text).unwrap();
    ctl.init();

    let (_, report) = cluster_create(&ctl, 0);
    assert_eq!(report["outcome"], "success", "{report:#}");
    let bundle_name = report["bundle"].as_str().unwrap().to_string();
    assert_store_holds(&ctl, &[&bundle_name]);
    let bundle = ctl.store.join(&bundle_name);
    let members = tar_list(&bundle);
    assert_eq!(members.len(), 3, "{members:?}");
    assert!(members[1].ends_with("_ctl-1_control.bkp"), "{members:?}");
    let manifest = manifest_of(&bundle);
    let entry = node_entry(&manifest, "ctl-1");
    let file = ctl.dir().join("own.bkp");
    member_by_offset(&bundle, entry, &file);
    ctl.run(&["verify", &file.display().to_string()]).expect(0);

    // Its own backup ran under the cluster run's lock, recorded as such.
    let audit = ctl.audit();
    let own_backup = audit
        .iter()
        .find(|r| r["operation"] == "create")
        .expect("its own backup is audited");
    assert_eq!(own_backup["trigger"], "cluster", "{own_backup:#}");
    assert_eq!(own_backup["outcome"], "success", "{own_backup:#}");
    assert!(
        !audit
            .iter()
            .any(|r| r["outcome"] == "interrupted" || r["outcome"] == "skipped"),
        "{audit:#?}"
    );
    let cluster = last_cluster_audit(&ctl);
    assert_eq!(cluster["outcome"], "success", "{cluster:#}");
    let status = ctl.status();
    assert_eq!(status["state"], "not running", "{status:#}");
    assert_eq!(
        status["last_backup"]["operation"], "cluster backup",
        "{status:#}"
    );
    assert!(status["last_failure"].is_null(), "{status:#}");
}

#[test]
fn a_node_that_starts_a_backup_after_the_preflight_answers_409_and_is_recorded_as_busy() {
    // The control node's backup takes a while, so data-1 can become busy
    // between the preflight and its own pull.
    let slow = command_component("slow", &["sh", "-c", "sleep 10; echo done"], "");
    let ctl = Node::start("ctl-1", "control", &format!("[[component]]\n{slow}"));
    let long = command_component("long", &["sh", "-c", "sleep 40; echo done"], "");
    let d1 = Node::start("data-1", "data", &format!("[[component]]\n{long}"));
    let coord = coordinator(&format!("{}{}", ctl.entry(), d1.entry()), 60);
    let run = coord.spawn(&["--json", "cluster", "create"]);
    wait_for(PATIENCE, "the control node's backup", || {
        (ctl.ops.status()["state"] == "in progress").then_some(())
    });
    let _own = d1.ops.spawn(&["create"]);
    wait_for(PATIENCE, "data-1's own backup", || {
        (d1.ops.status()["state"] == "in progress").then_some(())
    });
    let out = run.wait(PATIENCE);
    out.expect(3);
    let report = out.json();
    let entry = report["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "data-1")
        .cloned()
        .unwrap();
    assert_eq!(entry["outcome"], "failed", "{report:#}");
    let reason = entry["error"].as_str().unwrap();
    assert!(reason.contains("409"), "{reason}");
    let bundle_name = report["bundle"].as_str().unwrap();
    assert_store_holds(&coord, &[bundle_name]);
    assert_eq!(tar_list(&coord.store.join(bundle_name)).len(), 2);
}

#[test]
fn a_control_node_whose_backup_fails_cancels_the_run_before_the_data_nodes() {
    let ctl = Node::start("ctl-1", "control", "[hooks]\nbefore = [\"false\"]\n");
    let d1 = Node::start("data-1", "data", "");
    let coord = coordinator(&format!("{}{}", d1.entry(), ctl.entry()), 60);
    let (_, report) = cluster_create(&coord, 1);
    assert_eq!(report["outcome"], "failed", "{report:#}");
    assert!(report["bundle"].is_null());
    let reason = report["reason"].as_str().unwrap();
    assert!(
        reason.contains("ctl-1") && reason.contains("cancelled"),
        "{reason}"
    );
    assert_store_holds(&coord, &[]);
    assert!(d1.stored_images().is_empty(), "data-1 was never asked");
    assert_eq!(coord.status()["last_backup"]["outcome"], "failed");
}

#[test]
fn an_ha_pair_keeps_the_primary_when_the_secondary_is_gone_and_fails_without_the_primary() {
    let primary = Node::start("gw-a", "primary", "");
    let mut secondary = Node::start("gw-b", "secondary", "");
    let coord = coordinator(&format!("{}{}", secondary.entry(), primary.entry()), 60);
    secondary.kill();
    let (_, report) = cluster_create(&coord, 3);
    assert_eq!(report["outcome"], "partial", "{report:#}");
    let bundle_name = report["bundle"].as_str().unwrap().to_string();
    let members = tar_list(&coord.store.join(&bundle_name));
    assert_eq!(members.len(), 2, "{members:?}");
    assert!(members[1].ends_with("_gw-a_primary.bkp"), "{members:?}");
    let manifest = manifest_of(&coord.store.join(&bundle_name));
    assert_eq!(manifest["nodes"][0]["name"], "gw-a");
    assert_eq!(manifest["nodes"][0]["order"], 1);
    assert_eq!(node_entry(&manifest, "gw-b")["outcome"], "failed");

    // The pair the other way round: the primary gone cancels everything.
    let mut primary = primary;
    let secondary = Node::start("gw-b", "secondary", "");
    let coord = coordinator(&format!("{}{}", primary.entry(), secondary.entry()), 60);
    primary.kill();
    let (_, report) = cluster_create(&coord, 1);
    assert_eq!(report["outcome"], "failed", "{report:#}");
    assert_store_holds(&coord, &[]);
    assert!(secondary.stored_images().is_empty());
}

#[test]
fn a_node_listed_twice_is_a_configuration_mistake_named_before_anything_runs() {
    let entry = format!(
        "[[cluster.node]]\nname = \"data-1\"\nrole = \"data\"\nurl = \"https://127.0.0.1:9\"\n\
         fingerprint = \"sha256:{}\"\ntoken_file = \"/nonexistent\"\n\n",
        "0".repeat(64)
    );
    let coord = coordinator(&format!("{entry}{entry}"), 60);
    coord
        .run(&["cluster", "create"])
        .expect(2)
        .mentions("\"data-1\" is listed twice");
    assert_store_holds(&coord, &[]);
}

/// Both ends of a real bundle: what the coordinator wrote, `cluster extract`
/// gives back byte for byte, `restore BUNDLE --node` restores on its node,
/// and retention deletes older bundles as whole units after each run.
#[test]
fn a_real_bundle_extracts_and_restores_by_node_and_retention_keeps_whole_bundles() {
    let ctl = Node::start("ctl-1", "control", "");
    let d1 = Node::start("data-1", "data", "");
    let coord = coordinator(&format!("{}{}", ctl.entry(), d1.entry()), 60);
    let mut text = fs::read_to_string(&coord.config).unwrap();
    text.push_str("\n[retention]\nkeep_last = 1\n");
    fs::write(&coord.config, text).unwrap();

    let (_, first) = cluster_create(&coord, 0);
    let first = first["bundle"].as_str().unwrap().to_string();
    crate::util::next_second();
    let (_, second) = cluster_create(&coord, 0);
    let name = second["bundle"].as_str().unwrap().to_string();
    assert_eq!(
        second["pruned"],
        serde_json::json!([first.clone()]),
        "keep_last = 1: the older bundle goes, as a unit: {second:#}"
    );
    assert_store_holds(&coord, &[&name]);

    let bundle = coord.store.join(&name);
    let manifest = manifest_of(&bundle);
    let entry = node_entry(&manifest, "data-1");
    let image = entry["image"].as_str().unwrap();
    let out = coord.dir().join("extracted.bkp");
    coord
        .run(&[
            "cluster",
            "extract",
            &name,
            "--node",
            "data-1",
            "-o",
            &out.display().to_string(),
        ])
        .expect(0);
    let tar_out = Command::new("tar")
        .arg("-xOf")
        .arg(&bundle)
        .arg(image)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        fs::read(&out).unwrap(),
        tar_out.stdout,
        "the member's bytes"
    );

    let target = d1.ops.dir().join("from-bundle");
    d1.ops
        .run(&[
            "restore",
            &bundle.display().to_string(),
            "--node",
            "data-1",
            "--target",
            &target.display().to_string(),
            "--yes",
        ])
        .expect(0);
    let peer = ctl.ops.run(&[
        "restore",
        &bundle.display().to_string(),
        "--node",
        "data-1",
        "--target",
        &ctl.ops.dir().join("peer").display().to_string(),
        "--yes",
    ]);
    peer.expect_failure().mentions("data-1");
}
