//! `backup cluster create`: preflight every node, pull each image into a
//! staging object, write the bundle, record the outcome.
use std::sync::Arc;
use std::time::Duration;

use backup_core::cluster::{
    bundle_name, restore_order, BundleNode, ClusterManifest, CLUSTER_MANIFEST,
};
use backup_core::{
    Call, ClusterConfig, ClusterNode, CreateOptions, Destination, Engine, Error, ImageStream,
    Operation, Outcome, Role, RunRecord, ScheduledRun, Trigger,
};
use backup_storage::{PutMode, PutOptions, Storage};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use crate::bundle;
use crate::client::{refusal, NodeClient};

/// Options of a cluster backup.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ClusterOptions {
    /// Ask every node to include its audit components.
    pub include_audits: bool,
    /// What started the run (the audit log's `trigger`).
    pub trigger: Trigger,
}

/// The daemon's scheduled run when `[schedule] cluster = true`: a cluster
/// backup with the schedule's `include_audits`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScheduledCluster;

#[async_trait::async_trait]
impl ScheduledRun for ScheduledCluster {
    async fn run(&self, engine: &Engine) -> backup_core::Result<RunRecord> {
        let opts = ClusterOptions {
            include_audits: engine
                .config()
                .schedule
                .as_ref()
                .is_some_and(|s| s.include_audits),
            trigger: Trigger::Scheduled,
        };
        let report = create(engine, &opts).await?;
        Ok(RunRecord {
            time: Utc::now(),
            operation: Operation::ClusterCreate.status_name().into(),
            outcome: report.outcome,
            image: report.bundle,
            size: report.size,
            reason: report.reason,
        })
    }
}

/// What a cluster backup did.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterReport {
    /// The cluster's name.
    pub cluster: String,
    /// `success`, `partial` (a data/secondary node failed or its image is
    /// partial) or `failed` (a control/primary node failed: nothing published).
    pub outcome: Outcome,
    /// The bundle's name; set only when it was published.
    pub bundle: Option<String>,
    /// The bundle's size in bytes.
    pub size: u64,
    /// Why the run failed, or which nodes are missing or partial.
    pub reason: Option<String>,
    /// When the run started.
    pub created: DateTime<Utc>,
    /// Every configured node, as the manifest records it.
    pub nodes: Vec<BundleNode>,
    /// Bundles (and images) retention deleted after this one was published.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pruned: Vec<String>,
}

/// Backs up every node of `[cluster]` into one bundle in the engine's
/// storage, under the engine's operation lock; the outcome goes to the
/// status and the audit log (`cluster.create`). Fails only when the run
/// could not take place at all (no `[cluster]`, no storage, lock held);
/// a failed node or a cancelled run is an outcome of the report.
pub async fn create(engine: &Engine, opts: &ClusterOptions) -> backup_core::Result<ClusterReport> {
    let cluster = engine.config().cluster.clone().ok_or_else(|| {
        Error::Input(
            "no [cluster] in the configuration: name the cluster and its [[cluster.node]]s first"
                .into(),
        )
    })?;
    if cluster.nodes.is_empty() {
        return Err(Error::Input(
            "[cluster] has no [[cluster.node]]: list every node of the cluster".into(),
        ));
    }
    for (i, node) in cluster.nodes.iter().enumerate() {
        if cluster.nodes[..i].iter().any(|n| n.name == node.name) {
            return Err(Error::Input(format!(
                "[[cluster.node]] {:?} is listed twice: each node once, under its [appliance] node name",
                node.name
            )));
        }
    }
    let storage = engine.storage().cloned().ok_or_else(|| {
        Error::NoStorage("a cluster backup needs a [storage] to hold its bundle".into())
    })?;
    let created = Utc::now();
    let name = bundle_name(&engine.config().storage.prefix, &cluster.name, created);
    let run = Run {
        engine,
        cluster: &cluster,
        storage,
        name: name.clone(),
        created,
        opts: opts.clone(),
        timeout: Duration::from_secs(cluster.timeout_secs.max(1)),
    };
    let call = engine.with_call(Call::new().trigger(opts.trigger));
    let mut report = call
        .guarded(Operation::ClusterCreate, &name, async {
            let report = run.run().await?;
            let record = RunRecord {
                time: Utc::now(),
                operation: String::new(),
                outcome: report.outcome,
                image: report.bundle.clone(),
                size: report.size,
                reason: report.reason.clone(),
            };
            Ok((report, record))
        })
        .await?;
    // Retention keeps bundles as whole units, as it keeps images after a
    // backup: after each published bundle, under the lock again.
    if report.bundle.is_some() && engine.config().retention.is_enabled() {
        match call.prune(false).await {
            Ok(decisions) => {
                report.pruned = decisions
                    .into_iter()
                    .filter(|d| !d.keep)
                    .map(|d| d.name)
                    .collect()
            }
            Err(e) => tracing::warn!("retention could not run after the cluster backup: {e}"),
        }
    }
    Ok(report)
}

/// Whether a role's failure cancels the whole backup.
fn is_leader(role: Role) -> bool {
    matches!(role, Role::Control | Role::Primary)
}

struct Run<'a> {
    engine: &'a Engine,
    cluster: &'a ClusterConfig,
    storage: Arc<dyn Storage>,
    name: String,
    created: DateTime<Utc>,
    opts: ClusterOptions,
    timeout: Duration,
}

/// A node's image in its staging object.
struct Pulled {
    image: String,
    staging: String,
    size: u64,
    sha256: String,
    /// The failed components of a partial image.
    partial: Option<String>,
}

/// What `GET /status` says, as far as the coordinator checks it.
#[derive(Deserialize)]
struct NodeStatus {
    appliance: Identity,
    state: String,
}

#[derive(Deserialize)]
struct Identity {
    product: String,
    version: String,
    node: String,
    role: Role,
}

/// What `GET /runs/{id}` says.
#[derive(Deserialize)]
struct RunView {
    outcome: String,
    #[serde(default)]
    failed_components: Vec<String>,
    #[serde(default)]
    reason: Option<String>,
}

impl Run<'_> {
    async fn run(&self) -> backup_core::Result<ClusterReport> {
        let mut nodes: Vec<&ClusterNode> = self.cluster.nodes.iter().collect();
        nodes.sort_by_key(|n| restore_order(n.role));
        let mut results: Vec<Result<Pulled, String>> = Vec::new();

        // 1. Preflight, every node at once.
        // The coordinator's own node (if it is one) has no client: it is
        // backed up through the engine.
        let clients: Vec<Option<Result<NodeClient, String>>> = nodes
            .iter()
            .map(|n| (!self.is_local(n)).then(|| NodeClient::new(n, self.timeout)))
            .collect();
        let checks =
            futures::future::join_all(nodes.iter().zip(&clients).map(|(n, c)| {
                self.preflight(n, c.as_ref().map(|c| c.as_ref().map_err(Clone::clone)))
            }))
            .await;
        let cancelled = nodes
            .iter()
            .zip(&checks)
            .find(|(n, c)| is_leader(n.role) && c.is_err())
            .map(|(n, c)| {
                format!(
                    "{} node {} failed its preflight, so no node was backed up: {}",
                    n.role.as_str(),
                    n.name,
                    c.as_ref().err().map(String::as_str).unwrap_or_default()
                )
            });
        if let Some(reason) = cancelled {
            let nodes = self.manifest_nodes(
                &nodes,
                &checks
                    .into_iter()
                    .map(|c| {
                        c.and(Err(
                            "not backed up: the cluster backup was cancelled".to_string()
                        ))
                    })
                    .collect::<Vec<_>>(),
            );
            return Ok(self.failed(reason, nodes));
        }

        // 2. Pull: control/primary nodes one after the other, then the
        // others, `concurrency` at once.
        let leaders = nodes.iter().filter(|n| is_leader(n.role)).count();
        for i in 0..leaders {
            let result = self.back_up(nodes[i], &checks[i], &clients[i]).await;
            if let Err(e) = &result {
                let reason = format!(
                    "{} node {} failed, so the cluster backup was cancelled and nothing was published: {e}",
                    nodes[i].role.as_str(),
                    nodes[i].name
                );
                results.push(result);
                self.remove_staging(&results).await;
                let padded: Vec<_> = (0..nodes.len())
                    .map(|j| match results.get(j) {
                        Some(Ok(_)) => {
                            Err("not published: the cluster backup was cancelled".to_string())
                        }
                        Some(Err(e)) => Err(e.clone()),
                        None => Err("not backed up: the cluster backup was cancelled".to_string()),
                    })
                    .collect();
                let nodes = self.manifest_nodes(&nodes, &padded);
                return Ok(self.failed(reason, nodes));
            }
            results.push(result);
        }
        let others: Vec<Result<Pulled, String>> = futures::stream::iter(leaders..nodes.len())
            .map(|i| self.back_up(nodes[i], &checks[i], &clients[i]))
            .buffered(self.cluster.concurrency.max(1))
            .collect()
            .await;
        results.extend(others);

        // 3. The bundle.
        let pulled: Vec<Result<&Pulled, String>> = results
            .iter()
            .map(|r| r.as_ref().map_err(Clone::clone))
            .collect();
        let mut manifest_nodes = self.manifest_nodes(&nodes, &pulled);
        let failed: Vec<String> = manifest_nodes
            .iter()
            .filter(|n| n.outcome != "success")
            .map(|n| {
                format!(
                    "{} {}: {}",
                    n.name,
                    n.outcome,
                    n.error.as_deref().unwrap_or_default()
                )
            })
            .collect();
        let outcome = if failed.is_empty() {
            Outcome::Success
        } else {
            Outcome::Partial
        };
        let mut manifest = ClusterManifest {
            cluster: self.cluster.name.clone(),
            created: self.created,
            outcome: outcome.as_str().into(),
            nodes: std::mem::take(&mut manifest_nodes),
        };
        let written = self.write_bundle(&mut manifest, &results).await;
        self.remove_staging(&results).await;
        match written {
            Ok(size) => Ok(ClusterReport {
                cluster: self.cluster.name.clone(),
                outcome,
                bundle: Some(self.name.clone()),
                size,
                reason: (!failed.is_empty()).then(|| failed.join("; ")),
                created: self.created,
                nodes: manifest.nodes,
                pruned: Vec::new(),
            }),
            Err(e) => Err(e),
        }
    }

    fn failed(&self, reason: String, nodes: Vec<BundleNode>) -> ClusterReport {
        ClusterReport {
            cluster: self.cluster.name.clone(),
            outcome: Outcome::Failed,
            bundle: None,
            size: 0,
            reason: Some(reason),
            created: self.created,
            nodes,
            pruned: Vec::new(),
        }
    }

    /// The manifest's entries, one per node in restore order.
    fn manifest_nodes(
        &self,
        nodes: &[&ClusterNode],
        results: &[Result<&Pulled, String>],
    ) -> Vec<BundleNode> {
        nodes
            .iter()
            .zip(results)
            .map(|(n, r)| {
                let mut entry = BundleNode {
                    name: n.name.clone(),
                    role: n.role,
                    outcome: "failed".into(),
                    error: None,
                    image: None,
                    size: 0,
                    sha256: None,
                    offset: None,
                    order: restore_order(n.role),
                };
                match r {
                    Ok(p) => {
                        entry.outcome = if p.partial.is_some() {
                            "partial"
                        } else {
                            "success"
                        }
                        .into();
                        entry.error = p.partial.clone();
                        entry.image = Some(p.image.clone());
                        entry.size = p.size;
                        entry.sha256 = Some(p.sha256.clone());
                    }
                    Err(e) => entry.error = Some(e.clone()),
                }
                entry
            })
            .collect()
    }

    /// `GET /status`: reachable, certificate as pinned, same product and
    /// version, the configured name and role, nothing running.
    async fn preflight(
        &self,
        node: &ClusterNode,
        client: Option<Result<&NodeClient, String>>,
    ) -> Result<(), String> {
        let Some(client) = client else {
            // This appliance: its identity is its configuration, and the
            // run itself holds its lock.
            let role = self.engine.config().appliance.role;
            if role != node.role {
                return Err(format!(
                    "this appliance is node {:?} with role {} ([appliance] role), not {} as [[cluster.node]] says",
                    node.name,
                    role.as_str(),
                    node.role.as_str()
                ));
            }
            return Ok(());
        };
        let client = client?;
        let status: NodeStatus = client.get_json("/status").await?;
        let me = &self.engine.config().appliance;
        let it = &status.appliance;
        if it.node != node.name || it.role != node.role {
            return Err(format!(
                "{} answers as node {:?} ({}), not as the configured {:?} ({}): check its url in [[cluster.node]]",
                node.url,
                it.node,
                it.role.as_str(),
                node.name,
                node.role.as_str()
            ));
        }
        if it.product != me.product || it.version != me.version {
            return Err(format!(
                "node runs {} {}, the coordinator {} {}: every node and the coordinator must run the same product and version",
                it.product, it.version, me.product, me.version
            ));
        }
        if status.state == "in progress" {
            return Err(
                "a backup or restore is running on the node; try again when it has finished".into(),
            );
        }
        Ok(())
    }

    /// Whether `node` is the coordinator's own appliance.
    fn is_local(&self, node: &ClusterNode) -> bool {
        node.name == self.engine.config().appliance.node
    }

    /// A node's image into its staging object, once its preflight passed:
    /// pulled from its service, or made here for the coordinator's own node.
    async fn back_up(
        &self,
        node: &ClusterNode,
        check: &Result<(), String>,
        client: &Option<Result<NodeClient, String>>,
    ) -> Result<Pulled, String> {
        check.clone()?;
        match client {
            None => self.back_up_here(node).await,
            Some(Ok(client)) => self.pull(node, client).await,
            Some(Err(e)) => Err(e.clone()),
        }
    }

    /// Backs this appliance up through the engine, the image streamed into
    /// a staging object as a remote node's would be.
    async fn back_up_here(&self, node: &ClusterNode) -> Result<Pulled, String> {
        let staging = format!("{}.{}.staging", self.name, node.name);
        let mut upload = self
            .storage
            .put_opts(&staging, PutOptions::mode(PutMode::Create))
            .await
            .map_err(|e| format!("cannot stage the image in {}: {e}", self.storage))?;
        let (writer, mut reader) = tokio::io::duplex(256 * 1024);
        let mut opts = CreateOptions::default();
        opts.include_audits = self.opts.include_audits;
        // The image's own name, as a remote node's Content-Disposition gives it.
        let named = Arc::new(std::sync::Mutex::new(None::<String>));
        let slot = named.clone();
        opts.destination = Destination::Stream(
            ImageStream::new(writer)
                .named("the cluster bundle")
                .on_open(move |name| {
                    if let Ok(mut slot) = slot.lock() {
                        *slot = Some(name.to_string());
                    }
                }),
        );
        let call = self.engine.with_call(Call::new().trigger(Trigger::Cluster));
        let backup = async move {
            let report = call.create(&opts).await;
            drop(opts); // the writer: the reader sees the end of the image
            report
        };
        let mut hash = Sha256::new();
        let mut size = 0u64;
        let upload_ref = &mut upload;
        let hash_ref = &mut hash;
        let size_ref = &mut size;
        let pump = async move {
            loop {
                let mut buf = vec![0u8; 256 * 1024];
                let n = reader
                    .read(&mut buf)
                    .await
                    .map_err(|e| format!("reading this node's image: {e}"))?;
                if n == 0 {
                    return Ok::<(), String>(());
                }
                buf.truncate(n);
                hash_ref.update(&buf);
                *size_ref += n as u64;
                upload_ref
                    .write(Bytes::from(buf))
                    .await
                    .map_err(|e| format!("writing the staged image: {e}"))?;
            }
        };
        let (report, pumped) = tokio::join!(backup, pump);
        let report = match (report, pumped) {
            (Ok(report), Ok(())) => report,
            (Err(e), _) => {
                let _ = upload.abort().await;
                return Err(format!("this node's backup failed: {e}"));
            }
            (_, Err(e)) => {
                let _ = upload.abort().await;
                return Err(e);
            }
        };
        upload
            .complete()
            .await
            .map_err(|e| format!("storing the staged image: {e}"))?;
        let failed: Vec<&str> = report
            .manifest
            .components
            .iter()
            .filter(|c| c.error.is_some())
            .map(|c| c.name.as_str())
            .collect();
        let image = named
            .lock()
            .ok()
            .and_then(|n| n.clone())
            .ok_or("this node's backup named no image")?;
        Ok(Pulled {
            image,
            staging,
            size,
            sha256: hex::encode(hash.finalize()),
            partial: (report.outcome != Outcome::Success)
                .then(|| format!("components failed on the node: {}", failed.join(", "))),
        })
    }

    /// Pulls a fresh image of `node` into a staging object.
    async fn pull(&self, node: &ClusterNode, client: &NodeClient) -> Result<Pulled, String> {
        let path = format!(
            "/backup?node={}&audits={}",
            encode_query(&node.name),
            self.opts.include_audits
        );
        let response = client.get(&path).await?;
        let status = response.status();
        if !status.is_success() {
            let body = client
                .read_small(response.into_body())
                .await
                .unwrap_or_default();
            return Err(refusal("/backup", status, &body));
        }
        let run_id = response
            .headers()
            .get("x-backup-run")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or("the node's answer has no X-Backup-Run header")?;
        let image = response
            .headers()
            .get(hyper::header::CONTENT_DISPOSITION)
            .and_then(|v| v.to_str().ok())
            .and_then(attachment_name)
            .ok_or("the node's answer names no image (Content-Disposition)")?;
        let staging = format!("{}.{}.staging", self.name, node.name);
        let mut upload = self
            .storage
            .put_opts(&staging, PutOptions::mode(PutMode::Create))
            .await
            .map_err(|e| format!("cannot stage the image in {}: {e}", self.storage))?;
        let mut body = response.into_body();
        let mut hash = Sha256::new();
        let mut size = 0u64;
        let streamed: Result<(), String> = async {
            while let Some(chunk) = client.next_chunk(&mut body).await? {
                hash.update(&chunk);
                size += chunk.len() as u64;
                upload
                    .write(chunk)
                    .await
                    .map_err(|e| format!("writing the staged image: {e}"))?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = streamed {
            let _ = upload.abort().await;
            return Err(e);
        }
        upload
            .complete()
            .await
            .map_err(|e| format!("storing the staged image: {e}"))?;
        let pulled = Pulled {
            image,
            staging: staging.clone(),
            size,
            sha256: hex::encode(hash.finalize()),
            partial: None,
        };
        match self.outcome(client, &run_id, size).await {
            Ok(partial) => Ok(Pulled { partial, ..pulled }),
            Err(e) => {
                let _ = self.storage.delete(&staging).await;
                Err(e)
            }
        }
    }

    /// The node's word on its run: `Ok(None)` success, `Ok(Some(why))`
    /// partial, `Err` failed.
    async fn outcome(
        &self,
        client: &NodeClient,
        run_id: &str,
        size: u64,
    ) -> Result<Option<String>, String> {
        let path = format!("/runs/{}", encode_query(run_id));
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let view: RunView = client.get_json(&path).await?;
            match view.outcome.as_str() {
                "success" => return Ok(None),
                "partial" => {
                    return Ok(Some(format!(
                        "components failed on the node: {}",
                        view.failed_components.join(", ")
                    )))
                }
                "running" if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                "running" => {
                    return Err(format!(
                        "the node still reports its run {run_id} as running after the image ({size} bytes) ended"
                    ))
                }
                other => {
                    return Err(format!(
                        "the node's backup {other}: {}",
                        view.reason.unwrap_or_else(|| "no reason given".into())
                    ))
                }
            }
        }
    }

    /// Writes the bundle in one upload: the manifest, then each staged
    /// image (its checksum checked again on the way). Returns its size.
    async fn write_bundle(
        &self,
        manifest: &mut ClusterManifest,
        results: &[Result<Pulled, String>],
    ) -> backup_core::Result<u64> {
        let json = bundle::layout(manifest);
        let total = bundle::total_len(manifest, &json);
        let mtime = self.created.timestamp().max(0) as u64;
        let mut upload = self
            .storage
            .put_opts(
                &self.name,
                PutOptions::mode(PutMode::Create).with_size_hint(Some(total)),
            )
            .await?;
        let written: backup_core::Result<()> = async {
            let mut head = bundle::header(CLUSTER_MANIFEST, json.len() as u64, mtime);
            head.extend_from_slice(&json);
            head.resize(head.len() + bundle::padding(json.len() as u64) as usize, 0);
            upload.write(Bytes::from(head)).await?;
            for pulled in results.iter().flatten() {
                upload
                    .write(Bytes::from(bundle::header(&pulled.image, pulled.size, mtime)))
                    .await?;
                let mut reader = self.storage.get_opts(&pulled.staging, None).await?.reader;
                let mut hash = Sha256::new();
                let mut copied = 0u64;
                loop {
                    let mut buf = vec![0u8; 256 * 1024];
                    let n = reader
                        .read(&mut buf)
                        .await
                        .map_err(|e| {
                        backup_storage::Error::from_io(format!("reading {}", pulled.staging), e)
                    })?;
                    if n == 0 {
                        break;
                    }
                    buf.truncate(n);
                    hash.update(&buf);
                    copied += n as u64;
                    upload.write(Bytes::from(buf)).await?;
                }
                if copied != pulled.size || hex::encode(hash.finalize()) != pulled.sha256 {
                    return Err(Error::Preflight(format!(
                        "the staged image {} changed in {} ({copied} bytes read, {} pulled): the bundle was not published",
                        pulled.staging, self.storage, pulled.size
                    )));
                }
                let pad = bundle::padding(pulled.size) as usize;
                if pad > 0 {
                    upload.write(Bytes::from(vec![0u8; pad])).await?;
                }
            }
            upload
                .write(Bytes::from(vec![0u8; 2 * bundle::BLOCK as usize]))
                .await?;
            Ok(())
        }
        .await;
        match written {
            Ok(()) => {
                upload.complete().await?;
                Ok(total)
            }
            Err(e) => {
                let _ = upload.abort().await;
                Err(e)
            }
        }
    }

    /// Deletes every staging object of this run.
    async fn remove_staging(&self, results: &[Result<Pulled, String>]) {
        for pulled in results.iter().flatten() {
            if let Err(e) = self.storage.delete(&pulled.staging).await {
                tracing::warn!(
                    "could not remove the staging object {}: {e}",
                    pulled.staging
                );
            }
        }
    }
}

/// The file name of `attachment; filename="NAME"`, if it is a plain image
/// name (no path, no quotes or control characters).
fn attachment_name(value: &str) -> Option<String> {
    let name = value.split("filename=").nth(1)?.trim().trim_matches('"');
    let plain = !name.is_empty()
        && name.ends_with(".bkp")
        && !name.contains(['/', '\\', '"'])
        && !name.chars().any(char::is_control)
        && !name.starts_with('.');
    plain.then(|| name.to_string())
}

/// Percent-encodes what is not unreserved in a query value or path segment.
fn encode_query(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
