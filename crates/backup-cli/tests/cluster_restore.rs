//! Reading cluster bundles: `backup cluster list/show/extract/restore-plan`,
//! `backup restore BUNDLE --node NAME` and the bundle's restore lease.
//!
//! The nodes are real appliances (own configuration, state directory, data
//! and role) sharing one file storage; their images are made by the binary,
//! and the bundle is written here following the bundle layout (a plain tar,
//! `cluster-manifest.json` first, each node's image under its own name,
//! offsets of the members' data in the manifest).
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use backup_core::cluster::{bundle_name, restore_order, BundleNode, ClusterManifest};
use backup_core::Role;

use crate::util::{
    assert_same_tree, require_gnu_tar, sha256_file, wait_for, Ops, Out, Running, SECRET,
};

/// Image and bundle name prefix of the shared storage.
const PREFIX: &str = "edge-";

/// One node of the test cluster.
struct Node {
    name: &'static str,
    role: Role,
    etc: PathBuf,
    config: PathBuf,
}

/// Three nodes (control `ctl-1`, data `data-1` and `data-2`) with one
/// storage, under one temporary directory. `ctl-1` also has a `command`
/// component whose restore waits for the file `release` (to hold a
/// restore, and so its lease, as long as a test needs).
struct Cluster {
    /// The runner of the binary (its own appliance is unused).
    ops: Ops,
    store: PathBuf,
    nodes: Vec<Node>,
    release: PathBuf,
}

impl Cluster {
    fn new() -> Cluster {
        let ops = Ops::new("");
        let root = ops.dir().join("cluster");
        let store = root.join("store");
        fs::create_dir_all(&store).unwrap();
        let release = root.join("release");
        let mut nodes = Vec::new();
        for (name, role) in [
            ("ctl-1", Role::Control),
            ("data-1", Role::Data),
            ("data-2", Role::Data),
        ] {
            let dir = root.join(name);
            let etc = dir.join("etc");
            fs::create_dir_all(etc.join("conf.d")).unwrap();
            fs::write(etc.join("node.conf"), format!("node = {name}\n")).unwrap();
            fs::write(etc.join("conf.d/role.conf"), format!("role = {role:?}\n")).unwrap();
            let slow = if role == Role::Control {
                format!(
                    "\n[[component]]\nname = \"ledger\"\nkind = \"command\"\n\
                     backup = [\"sh\", \"-c\", \"echo ledger of {name}\"]\n\
                     restore = [\"sh\", \"-c\", \"cat > /dev/null; while [ ! -e {rel} ]; do sleep 0.05; done\"]\n",
                    rel = release.display()
                )
            } else {
                String::new()
            };
            let config = dir.join("backup.toml");
            fs::write(
                &config,
                format!(
                    "[appliance]\nproduct = \"edge-gateway\"\nversion = \"2.1.0\"\nnode = \"{name}\"\n\
                     role = \"{}\"\ncluster = \"edge\"\nstate_dir = {:?}\n\n\
                     [storage]\nurl = \"file://{}\"\nprefix = \"{PREFIX}\"\n\n\
                     [encryption]\nkdf_memory_mib = 19\nkdf_iterations = 2\nkdf_parallelism = 1\n\n\
                     [cluster]\nname = \"edge\"\n\n\
                     [[component]]\nname = \"config\"\nkind = \"files\"\npaths = [{:?}]\n{slow}",
                    role.as_str(),
                    dir.join("state").display().to_string(),
                    store.display(),
                    etc.display().to_string(),
                ),
            )
            .unwrap();
            nodes.push(Node {
                name,
                role,
                etc,
                config,
            });
        }
        let cluster = Cluster {
            ops,
            store,
            nodes,
            release,
        };
        for n in &cluster.nodes {
            cluster.on(n.name, &["init"]).expect(0);
        }
        cluster
    }

    fn node(&self, name: &str) -> &Node {
        self.nodes.iter().find(|n| n.name == name).expect("a node")
    }

    /// `backup ARGS` on node `name` (its configuration, the secret set).
    fn on(&self, name: &str, args: &[&str]) -> Out {
        self.ops
            .run_with(&self.node(name).config, Some(SECRET), args)
    }

    fn spawn_on(&self, name: &str, args: &[&str]) -> Running {
        self.ops
            .spawn_with(&self.node(name).config, Some(SECRET), args)
    }

    /// Each node backs itself up into the shared storage; returns the
    /// image names by node.
    fn images(&self) -> Vec<(&'static str, String)> {
        self.nodes
            .iter()
            .map(|n| {
                let out = self.on(n.name, &["create", "--json"]);
                out.expect(0);
                (n.name, out.json()["image"].as_str().unwrap().to_string())
            })
            .collect()
    }

    /// A bundle of `images` (a node without one is recorded as failed) in
    /// the storage; returns its name.
    fn bundle(&self, images: &[(&'static str, Option<String>)]) -> String {
        self.bundle_at(chrono::Utc::now(), images)
    }

    /// A bundle as [`Cluster::bundle`] writes it, made at `created`.
    fn bundle_at(
        &self,
        created: chrono::DateTime<chrono::Utc>,
        images: &[(&'static str, Option<String>)],
    ) -> String {
        let name = bundle_name(PREFIX, "edge", created);
        let members: Vec<(BundleNode, Option<PathBuf>)> = images
            .iter()
            .map(|(node, image)| {
                let role = self.node(node).role;
                let path = image.as_ref().map(|i| self.store.join(i));
                let entry = BundleNode {
                    name: node.to_string(),
                    role,
                    outcome: if image.is_some() { "success" } else { "failed" }.into(),
                    error: image
                        .is_none()
                        .then(|| "connection refused by https://127.0.0.1:1/".to_string()),
                    image: image.clone(),
                    size: path.as_ref().map_or(0, |p| fs::metadata(p).unwrap().len()),
                    sha256: path.as_ref().map(|p| sha256_file(p)),
                    offset: None,
                    order: restore_order(role),
                };
                (entry, path)
            })
            .collect();
        let outcome = if images.iter().all(|(_, i)| i.is_some()) {
            "success"
        } else {
            "partial"
        };
        write_bundle(
            &self.store.join(&name),
            ClusterManifest {
                cluster: "edge".into(),
                created,
                outcome: outcome.into(),
                nodes: members.iter().map(|(n, _)| n.clone()).collect(),
            },
            &members,
        );
        name
    }

    fn lease(&self, bundle: &str) -> PathBuf {
        self.store.join(format!("{bundle}.restore-lease"))
    }
}

/// Writes a bundle: the manifest first, then each image that exists, with
/// the offsets of their data in the manifest (found by laying the tar out
/// until the manifest's own length stops moving them), then checks the
/// offsets against where a tar reader finds the members.
fn write_bundle(
    path: &Path,
    mut manifest: ClusterManifest,
    members: &[(BundleNode, Option<PathBuf>)],
) {
    let padded = |n: u64| n.div_ceil(512) * 512;
    loop {
        let json = serde_json::to_vec_pretty(&manifest).unwrap();
        let mut at = 512 + padded(json.len() as u64);
        let mut changed = false;
        for (i, (entry, image)) in members.iter().enumerate() {
            if image.is_none() {
                continue;
            }
            let offset = Some(at + 512);
            if manifest.nodes[i].offset != offset {
                manifest.nodes[i].offset = offset;
                changed = true;
            }
            at += 512 + padded(entry.size);
        }
        if !changed {
            break;
        }
    }
    let mut tar = tar::Builder::new(fs::File::create(path).unwrap());
    let json = serde_json::to_vec_pretty(&manifest).unwrap();
    let mut header = tar::Header::new_gnu();
    header.set_size(json.len() as u64);
    header.set_mode(0o600);
    header.set_mtime(manifest.created.timestamp() as u64);
    tar.append_data(&mut header, "cluster-manifest.json", &json[..])
        .unwrap();
    for (entry, image) in members {
        let Some(image) = image else { continue };
        let mut header = tar::Header::new_gnu();
        header.set_size(entry.size);
        header.set_mode(0o600);
        header.set_mtime(manifest.created.timestamp() as u64);
        tar.append_data(
            &mut header,
            entry.image.as_deref().unwrap(),
            fs::File::open(image).unwrap(),
        )
        .unwrap();
    }
    tar.into_inner().unwrap();
    // The layout as a tar reader sees it.
    let mut archive = tar::Archive::new(fs::File::open(path).unwrap());
    let found: Vec<(String, u64)> = archive
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.path().unwrap().display().to_string(),
                e.raw_file_position(),
            )
        })
        .collect();
    let expected: Vec<(String, u64)> = std::iter::once(("cluster-manifest.json".to_string(), 512))
        .chain(
            manifest
                .nodes
                .iter()
                .filter_map(|n| Some((n.image.clone()?, n.offset?))),
        )
        .collect();
    assert_eq!(found, expected, "the bundle's layout");
}

fn tar_listing(bundle: &Path) -> Vec<String> {
    require_gnu_tar();
    let out = Command::new("tar")
        .arg("-tf")
        .arg(bundle)
        .stdin(Stdio::null())
        .output()
        .expect("running tar");
    assert!(out.status.success(), "tar -tf failed: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn list_show_extract_and_plan_read_a_bundle_gnu_tar_lists() {
    let c = Cluster::new();
    let images = c.images();
    let bundle = c.bundle(&[
        ("ctl-1", Some(images[0].1.clone())),
        ("data-1", Some(images[1].1.clone())),
        ("data-2", None),
    ]);
    let path = c.store.join(&bundle);

    // GNU tar lists the manifest first, then the role-named images.
    let listed = tar_listing(&path);
    assert_eq!(
        listed,
        vec![
            "cluster-manifest.json".to_string(),
            images[0].1.clone(),
            images[1].1.clone()
        ]
    );
    assert!(
        images[0].1.ends_with("_ctl-1_control.bkp"),
        "{}",
        images[0].1
    );
    assert!(images[1].1.ends_with("_data-1_data.bkp"), "{}", images[1].1);

    // list: the bundle with its outcome and nodes; images are not bundles.
    let out = c.on("data-1", &["--json", "cluster", "list"]);
    out.expect(0);
    let list = out.json();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["name"], bundle.as_str());
    assert_eq!(list[0]["manifest"]["outcome"], "partial");
    let text = c.on("data-1", &["cluster", "list"]);
    text.expect(0).mentions(&bundle).mentions("partial");

    // show: the per-node table from the manifest.
    let out = c.on("data-1", &["--json", "cluster", "show", &bundle]);
    out.expect(0);
    let nodes = out.json()["nodes"].as_array().unwrap().clone();
    let roles: Vec<(&str, &str, &str)> = nodes
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap(),
                n["role"].as_str().unwrap(),
                n["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        roles,
        vec![
            ("ctl-1", "control", "success"),
            ("data-1", "data", "success"),
            ("data-2", "data", "failed")
        ]
    );
    c.on("data-1", &["cluster", "show", &bundle])
        .expect(0)
        .mentions(&images[1].1)
        .mentions("connection refused");

    // extract by default writes the member's own name in the current
    // directory, mode 0600, the same bytes as the image the node made.
    c.on(
        "data-1",
        &["cluster", "extract", &bundle, "--node", "data-1"],
    )
    .expect(0);
    let extracted = c.ops.dir().join(&images[1].1);
    assert_eq!(
        fs::read(&extracted).unwrap(),
        fs::read(c.store.join(&images[1].1)).unwrap()
    );
    assert_eq!(
        fs::metadata(&extracted).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // … from a bundle file too, to a chosen name; and it verifies.
    let out_file = c.ops.dir().join("ctl.bkp");
    let bundle_file = path.display().to_string();
    let out = c.on(
        "ctl-1",
        &[
            "--json",
            "cluster",
            "extract",
            &bundle_file,
            "--node",
            "ctl-1",
            "-o",
            out_file.to_str().unwrap(),
        ],
    );
    out.expect(0);
    assert_eq!(out.json()["sha256"], sha256_file(&out_file));
    assert_eq!(
        sha256_file(&out_file),
        sha256_file(&c.store.join(&images[0].1))
    );
    c.on("ctl-1", &["verify", out_file.to_str().unwrap()])
        .expect(0);
    // A node with no image in the bundle: said so, nothing written.
    c.on(
        "data-2",
        &["cluster", "extract", &bundle, "--node", "data-2"],
    )
    .expect(2)
    .mentions("failed in the cluster backup")
    .mentions("earlier bundle");
    c.on(
        "data-2",
        &["cluster", "extract", &bundle, "--node", "nobody"],
    )
    .expect(2)
    .mentions("no node \"nobody\"");

    // The audit log records the extract.
    let audit = c.on("data-1", &["--json", "audit"]).expect(0).json();
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["operation"] == "cluster.extract" && r["outcome"] == "done"),
        "{audit}"
    );

    // restore-plan: control first, the command for each node.
    let plan = c.on("data-1", &["cluster", "restore-plan", &bundle]);
    plan.expect(0);
    let text = plan.stdout();
    let ctl = text.find("1. ctl-1 (control)").expect(&text);
    let data = text.find("2. data-1 (data)").expect(&text);
    assert!(ctl < data, "{text}");
    assert!(
        text.contains(&format!("backup restore {bundle} --node ctl-1")),
        "{text}"
    );
    assert!(text.contains("2. data-2 (data): no image"), "{text}");
    let plan = c.on("data-1", &["--json", "cluster", "restore-plan", &bundle]);
    let steps = plan.expect(0).json()["steps"].as_array().unwrap().clone();
    assert_eq!(steps[0]["node"], "ctl-1");
    assert!(steps[2]["command"].is_null());
}

#[test]
fn a_corrupted_member_fails_its_checksum_and_leaves_nothing_behind() {
    let c = Cluster::new();
    let images = c.images();
    let bundle = c.bundle(&[
        ("ctl-1", Some(images[0].1.clone())),
        ("data-1", Some(images[1].1.clone())),
        ("data-2", Some(images[2].1.clone())),
    ]);
    let path = c.store.join(&bundle);
    let manifest: ClusterManifest = serde_json::from_value(
        c.on("data-1", &["--json", "cluster", "show", &bundle])
            .expect(0)
            .json(),
    )
    .unwrap();
    let data1 = &manifest.nodes[1];
    // One byte in the middle of data-1's image.
    let mut bytes = fs::read(&path).unwrap();
    let at = (data1.offset.unwrap() + data1.size / 2) as usize;
    bytes[at] ^= 0x40;
    fs::write(&path, &bytes).unwrap();

    let out_dir = c.ops.dir().join("out");
    fs::create_dir_all(&out_dir).unwrap();
    let target = out_dir.join("data-1.bkp");
    c.on(
        "data-1",
        &[
            "cluster",
            "extract",
            &bundle,
            "--node",
            "data-1",
            "-o",
            target.to_str().unwrap(),
        ],
    )
    .expect(1)
    .mentions("SHA-256")
    .mentions("damaged");
    assert_eq!(
        crate::util::names_in(&out_dir),
        Vec::<String>::new(),
        "nothing is left"
    );
    // The other members still come out whole.
    c.on(
        "data-2",
        &[
            "cluster",
            "extract",
            &bundle,
            "--node",
            "data-2",
            "-o",
            out_dir.join("data-2.bkp").to_str().unwrap(),
        ],
    )
    .expect(0);
    // A restore of the damaged member fails, changes nothing and frees
    // the lease.
    let restore_to = c.ops.dir().join("restored");
    c.on(
        "data-1",
        &[
            "restore",
            &bundle,
            "--node",
            "data-1",
            "--target",
            restore_to.to_str().unwrap(),
        ],
    )
    .expect(1);
    assert!(!restore_to.exists() || crate::util::names_in(&restore_to).is_empty());
    assert!(!c.lease(&bundle).exists());
}

#[test]
fn a_node_restores_from_the_bundle_on_itself_and_is_refused_on_a_peer() {
    let c = Cluster::new();
    let images = c.images();
    let bundle = c.bundle(&[
        ("ctl-1", Some(images[0].1.clone())),
        ("data-1", Some(images[1].1.clone())),
        ("data-2", Some(images[2].1.clone())),
    ]);
    let data1 = c.node("data-1");
    let original = c.ops.dir().join("data-1-etc-before");
    crate::util::copy_tree(&data1.etc, &original);
    fs::write(data1.etc.join("node.conf"), "node = broken\n").unwrap();
    fs::write(data1.etc.join("stray.conf"), "not in the image\n").unwrap();

    // In place, on its own node: the order is shown as advice.
    let out = c.on("data-1", &["restore", &bundle, "--node", "data-1", "--yes"]);
    out.expect(0)
        .mentions("restored config")
        .mentions("1. ctl-1 (control), 2. data-1 (data), 2. data-2 (data)");
    assert_same_tree(&original, &data1.etc, &[]);
    assert!(!c.lease(&bundle).exists(), "the lease is released");

    // On a peer: the engine's identity check refuses it, nothing written.
    let target = c.ops.dir().join("peer-target");
    c.on(
        "data-2",
        &[
            "restore",
            &bundle,
            "--node",
            "data-1",
            "--target",
            target.to_str().unwrap(),
        ],
    )
    .expect(1)
    .mentions("belongs to node \"data-1\"");
    assert!(!target.exists() || crate::util::names_in(&target).is_empty());
    assert!(!c.lease(&bundle).exists(), "the lease is released");

    // A bundle file: its lease lies beside it, and is honoured there too.
    let carried = c.ops.dir().join("carried");
    fs::create_dir_all(&carried).unwrap();
    let file = carried.join(&bundle);
    fs::copy(c.store.join(&bundle), &file).unwrap();
    let beside = carried.join(format!("{bundle}.restore-lease"));
    let host = fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    fs::write(
        &beside,
        format!(
            r#"{{"node":"ctl-1","host":"{}","pid":{},"started":"{}"}}"#,
            host.trim(),
            std::process::id(),
            chrono::Utc::now().to_rfc3339()
        ),
    )
    .unwrap();
    let file_target = c.ops.dir().join("from-file");
    let from_file = [
        "restore",
        file.to_str().unwrap(),
        "--node",
        "data-1",
        "--target",
        file_target.to_str().unwrap(),
    ];
    c.on("data-1", &from_file)
        .expect(4)
        .mentions("node ctl-1")
        .mentions(beside.to_str().unwrap());
    fs::remove_file(&beside).unwrap();
    c.on("data-1", &from_file).expect(0);
    assert_eq!(
        fs::read_to_string(crate::util::under(
            &file_target,
            &data1.etc.join("node.conf")
        ))
        .unwrap(),
        "node = data-1\n"
    );
    assert_eq!(
        crate::util::names_in(&carried),
        vec![bundle.clone()],
        "no lease is left"
    );

    // The audit log names the node's image in the bundle.
    let audit = c.on("data-1", &["--json", "audit"]).expect(0).json();
    let shown = format!("{bundle} (node data-1)");
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["operation"] == "restore"
                && r["outcome"] == "done"
                && r["target"].as_str().unwrap_or("").starts_with(&shown)),
        "{audit}"
    );
}

#[test]
fn restores_from_one_bundle_run_one_at_a_time() {
    let c = Cluster::new();
    let images = c.images();
    let bundle = c.bundle(&[
        ("ctl-1", Some(images[0].1.clone())),
        ("data-1", Some(images[1].1.clone())),
        ("data-2", Some(images[2].1.clone())),
    ]);
    let lease = c.lease(&bundle);
    // ctl-1's restore holds the lease until `release` appears.
    let first = c.spawn_on("ctl-1", &["restore", &bundle, "--node", "ctl-1", "--yes"]);
    let holder: serde_json::Value =
        wait_for(Duration::from_secs(60), "the first restore's lease", || {
            serde_json::from_slice(&fs::read(&lease).ok()?).ok()
        });
    assert_eq!(holder["node"], "ctl-1");
    assert_eq!(holder["pid"], first.pid());

    let target = c.ops.dir().join("data-1-target");
    let second = [
        "restore",
        &bundle,
        "--node",
        "data-1",
        "--target",
        target.to_str().unwrap(),
    ];
    c.on("data-1", &second)
        .expect(4)
        .mentions("node ctl-1")
        .mentions(&first.pid().to_string())
        .mentions("one at a time");
    // A live holder's lease is not taken over.
    let mut take_over = second.to_vec();
    take_over.push("--take-over-lease");
    c.on("data-1", &take_over)
        .expect(4)
        .mentions("still running");
    assert!(!target.exists());
    let audit = c.on("data-1", &["--json", "audit"]).expect(0).json();
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["operation"] == "restore" && r["outcome"] == "skipped"),
        "{audit}"
    );

    fs::write(&c.release, "").unwrap();
    first.wait(Duration::from_secs(60)).expect(0);
    assert!(!lease.exists(), "the first restore released the lease");
    c.on("data-1", &second).expect(0);
    let restored = crate::util::under(&target, &c.node("data-1").etc.join("node.conf"));
    assert_eq!(fs::read_to_string(restored).unwrap(), "node = data-1\n");
    assert!(!lease.exists());
}

#[test]
fn a_stale_lease_is_taken_over_only_with_the_flag() {
    let c = Cluster::new();
    let images = c.images();
    let bundle = c.bundle(&[
        ("ctl-1", Some(images[0].1.clone())),
        ("data-1", Some(images[1].1.clone())),
        ("data-2", Some(images[2].1.clone())),
    ]);
    let lease = c.lease(&bundle);
    let host = fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string();
    // A holder on this host whose process is gone: a pid beyond pid_max.
    let mut pid_max = String::new();
    fs::File::open("/proc/sys/kernel/pid_max")
        .unwrap()
        .read_to_string(&mut pid_max)
        .unwrap();
    let dead = pid_max.trim().parse::<u64>().unwrap() + 1;
    let record = format!(
        r#"{{"node":"ctl-1","host":"{host}","pid":{dead},"started":"2026-11-29T01:00:00Z"}}"#
    );
    fs::write(&lease, &record).unwrap();
    let target = c.ops.dir().join("t");
    let args = [
        "restore",
        &bundle,
        "--node",
        "data-1",
        "--target",
        target.to_str().unwrap(),
    ];
    c.on("data-1", &args)
        .expect(4)
        .mentions("--take-over-lease");
    assert_eq!(fs::read_to_string(&lease).unwrap(), record, "left alone");

    let mut take_over = args.to_vec();
    take_over.push("--take-over-lease");
    c.on("data-1", &take_over)
        .expect(0)
        .mentions("took over the restore lease");
    assert!(!lease.exists(), "released at the end");

    // A lease held elsewhere is stale only once older than lease_stale_secs.
    let fresh = format!(
        r#"{{"node":"ctl-1","host":"elsewhere","pid":1,"started":"{}"}}"#,
        chrono::Utc::now().to_rfc3339()
    );
    fs::write(&lease, &fresh).unwrap();
    let target2 = c.ops.dir().join("t2");
    let again = vec![
        "restore",
        &bundle,
        "--node",
        "data-1",
        "--target",
        target2.to_str().unwrap(),
        "--take-over-lease",
    ];
    c.on("data-1", &again).expect(4).mentions("host elsewhere");
    let old = format!(
        r#"{{"node":"ctl-1","host":"elsewhere","pid":1,"started":"{}"}}"#,
        (chrono::Utc::now() - chrono::Duration::hours(7)).to_rfc3339()
    );
    fs::write(&lease, &old).unwrap();
    c.on("data-1", &again).expect(0);
    assert!(!lease.exists());
}

#[test]
fn prune_keeps_and_deletes_bundles_as_whole_units() {
    let c = Cluster::new();
    let images = c.images();
    let all: Vec<(&'static str, Option<String>)> =
        images.iter().map(|(n, i)| (*n, Some(i.clone()))).collect();
    let mut partial = all.clone();
    partial[2].1 = None;
    let hours_ago = |h: i64| chrono::Utc::now() - chrono::Duration::hours(h);
    let leased = c.bundle_at(hours_ago(4), &all);
    let old = c.bundle_at(hours_ago(3), &all);
    let newest_success = c.bundle_at(hours_ago(2), &all);
    let newest = c.bundle_at(hours_ago(1), &partial);
    // A node is being restored from the oldest one.
    fs::write(
        c.lease(&leased),
        r#"{"node":"data-1","host":"elsewhere","pid":1,"started":"2026-11-29T01:00:00Z"}"#,
    )
    .unwrap();
    // The coordinator keeps one bundle (and one image of its own).
    let coordinator = c.ops.dir().join("coordinator.toml");
    fs::write(
        &coordinator,
        fs::read_to_string(&c.node("ctl-1").config).unwrap() + "\n[retention]\nkeep_last = 1\n",
    )
    .unwrap();
    let prune = |args: &[&str]| c.ops.run_with(&coordinator, Some(SECRET), args);

    let out = prune(&["--json", "prune", "--dry-run"]);
    out.expect(0);
    let decisions = out.json();
    let verdict = |name: &str| {
        decisions
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == name)
            .unwrap_or_else(|| panic!("no decision on {name}: {decisions}"))["keep"]
            .as_bool()
            .unwrap()
    };
    assert!(verdict(&newest), "the newest bundle is kept");
    assert!(
        verdict(&newest_success),
        "the newest successful bundle is kept"
    );
    assert!(!verdict(&old), "an older bundle goes");
    assert!(verdict(&leased), "a bundle a node restores from is kept");
    assert!(c.store.join(&old).exists(), "a dry run deletes nothing");

    prune(&["prune"]).expect(0).mentions(&old);
    for kept in [&leased, &newest_success, &newest] {
        assert!(c.store.join(kept).exists(), "{kept} was kept");
    }
    assert!(!c.store.join(&old).exists(), "{old} was deleted whole");
    // The images the bundles were made from are the nodes' own: data nodes'
    // images are not this node's to prune.
    for (_, image) in &images {
        assert!(c.store.join(image).exists(), "{image} is left alone");
    }
    let audit = prune(&["--json", "audit"]).expect(0).json();
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["operation"] == "prune.delete" && r["target"] == old.as_str()),
        "{audit}"
    );
}
