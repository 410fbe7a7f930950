//! `GET /`: the service's one page, rendered on the server: the status,
//! a *Back up* button per node, and the images with *Download* and
//! *Copy link* for administrators. A few lines of script copy a link; the
//! rest works without any.
use std::fmt::Write;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use backup_core::{ImageSummary, RunRecord, StatusView};
use chrono::{DateTime, Utc};

use crate::auth::Role;
use crate::links::encode_path;
use crate::request::{Audit, Req};
use crate::service::Service;

pub(crate) async fn page(State(service): State<Service>, req: Req) -> Response {
    let principal = match req.authorize(&service, Role::Auditor).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let actor = req.actor(Some(&principal.user));
    let engine = &service.inner.engine;
    let status = engine.status();
    let images = engine.list().await;
    let admin = principal.role == Role::Admin;
    let view = View {
        node: &engine.config().appliance.node,
        role: engine.config().appliance.role.as_str(),
        product: &engine.config().appliance.product,
        base: &req.base,
        user: &principal.user,
        admin,
        stored: engine.config().http.store_served && engine.storage().is_some(),
        status: status.as_ref().map_err(|e| e.to_string()),
        images: images.as_ref().map_err(|e| e.to_string()),
    };
    let html = view.render();
    req.audit(&service, Audit::new(actor, "page", "done"));
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        html,
    )
        .into_response()
}

struct View<'a> {
    node: &'a str,
    role: &'a str,
    product: &'a str,
    base: &'a str,
    user: &'a str,
    admin: bool,
    /// Whether a backup from the page is stored too (`[http] store_served`).
    stored: bool,
    status: Result<&'a StatusView, String>,
    images: Result<&'a Vec<ImageSummary>, String>,
}

/// Text for HTML: `&`, `<`, `>`, `"` and `'` escaped.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn when(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn record(r: Option<&RunRecord>) -> String {
    match r {
        None => "never".into(),
        Some(r) => {
            let mut s = format!("{} — {}", when(&r.time), r.outcome);
            if let Some(image) = &r.image {
                let _ = write!(s, ", {image}");
            }
            if let Some(reason) = &r.reason {
                let _ = write!(s, ": {reason}");
            }
            s
        }
    }
}

fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

impl View<'_> {
    fn render(&self) -> String {
        let mut h = String::new();
        let running = matches!(&self.status, Ok(s) if s.state == "in progress");
        let _ = write!(
            h,
            r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
{refresh}<title>Backups of {node}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2rem;color:#1d2430;max-width:72rem}}
h1{{font-size:1.4rem}} h2{{font-size:1.1rem;margin-top:2rem}}
table{{border-collapse:collapse;width:100%}} th,td{{text-align:left;padding:.35rem .6rem;border-bottom:1px solid #d8dde6;vertical-align:top}}
th{{background:#f2f4f8;font-weight:600}} .muted{{color:#5b6577}} .bad{{color:#a3161a}}
button{{padding:.35rem .9rem;border:1px solid #2c5fb3;background:#2c66c4;color:#fff;border-radius:4px;cursor:pointer}}
button.plain{{background:#fff;color:#2c66c4}} form{{margin:0}} code{{font-size:.9em}}
</style></head><body>
<h1>Backups of {node} <span class="muted">({role}, {product})</span></h1>
<p class="muted">Signed in as {user}{admin_note}.</p>
"#,
            refresh = if running {
                "<meta http-equiv=\"refresh\" content=\"5\">\n"
            } else {
                ""
            },
            node = esc(self.node),
            role = esc(self.role),
            product = esc(self.product),
            user = esc(self.user),
            admin_note = if self.admin {
                " (administrator)"
            } else {
                " (auditor: read only)"
            },
        );
        self.status_table(&mut h);
        if self.admin {
            self.backup_form(&mut h);
        }
        self.image_table(&mut h);
        if self.admin {
            h.push_str(SCRIPT);
        }
        h.push_str("</body></html>\n");
        h
    }

    fn status_table(&self, h: &mut String) {
        h.push_str("<h2>Status</h2>\n");
        let s = match &self.status {
            Ok(s) => s,
            Err(e) => {
                let _ = writeln!(
                    h,
                    "<p class=\"bad\">The status could not be read: {}</p>",
                    esc(e)
                );
                return;
            }
        };
        let state = match (&s.state[..], &s.current) {
            ("in progress", Some(c)) => format!(
                "in progress: {} of {}, component {}, {} done{}",
                c.operation,
                c.image.as_deref().unwrap_or("-"),
                c.component.as_deref().unwrap_or("-"),
                size(c.bytes_done),
                s.elapsed_secs
                    .map(|e| format!(", {e} s elapsed"))
                    .unwrap_or_default()
            ),
            (state, _) => state.to_string(),
        };
        let next = match (&s.next_run, &s.daemon) {
            (Some(t), Some(_)) => format!("{} ({})", when(t), s.schedule),
            (Some(t), None) => format!(
                "{} ({}; no scheduler daemon is running)",
                when(t),
                s.schedule
            ),
            (None, _) => s.schedule.clone(),
        };
        let rows = [
            ("State", state, false),
            ("Last success", record(s.last_success.as_ref()), false),
            ("Next scheduled run", next, false),
            (
                "Last failure",
                record(s.last_failure.as_ref()),
                s.last_failure.is_some(),
            ),
        ];
        h.push_str("<table id=\"status\">\n");
        for (name, value, bad) in rows {
            let _ = writeln!(
                h,
                "<tr><th scope=\"row\">{name}</th><td{}>{}</td></tr>",
                if bad { " class=\"bad\"" } else { "" },
                esc(&value)
            );
        }
        h.push_str("</table>\n");
    }

    fn backup_form(&self, h: &mut String) {
        let node = esc(self.node);
        let _ = write!(
            h,
            r#"<h2>Back up</h2>
<table><tr><th>Node</th><th>Role</th><th></th></tr>
<tr><td>{node}</td><td>{role}</td><td>
<form method="get" action="{base}/backup" id="form-{node}">
<input type="hidden" name="node" value="{node}">
<label><input type="checkbox" name="audits" value="true" id="include-audits-{node}"> Include audits</label>
<button type="submit" id="backup-{node}">Back up</button>
</form></td></tr></table>
<p class="muted">The browser downloads the encrypted image as it is written{stored}.</p>
"#,
            role = esc(self.role),
            base = esc(self.base),
            stored = if self.stored {
                ", and a copy is kept in the storage"
            } else {
                ""
            },
        );
    }

    fn image_table(&self, h: &mut String) {
        h.push_str("<h2>Images</h2>\n");
        let images = match &self.images {
            Ok(i) => i,
            Err(e) => {
                let _ = writeln!(
                    h,
                    "<p class=\"bad\">The images could not be listed: {}</p>",
                    esc(e)
                );
                return;
            }
        };
        if images.is_empty() {
            h.push_str("<p class=\"muted\">No images in the storage.</p>\n");
            return;
        }
        let _ = writeln!(
            h,
            "<table id=\"images\"><tr><th>Image</th><th>Created</th><th>Outcome</th><th>Size</th>{}</tr>",
            if self.admin { "<th></th>" } else { "" }
        );
        for i in images.iter().rev() {
            let (created, outcome) = match &i.sidecar {
                Some(s) => (when(&s.info.created), s.manifest.outcome.to_string()),
                None => ("-".into(), "unknown (no sidecar)".into()),
            };
            let _ = write!(
                h,
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td>",
                esc(&i.name),
                esc(&created),
                esc(&outcome),
                size(i.size)
            );
            if self.admin {
                let url = format!("{}/images/{}", self.base, encode_path(&i.name));
                let _ = write!(
                    h,
                    "<td><a href=\"{url}\" download>Download</a> <button class=\"plain\" type=\"button\" data-link=\"{url}/link\">Copy link</button></td>",
                    url = esc(&url)
                );
            }
            h.push_str("</tr>\n");
        }
        h.push_str("</table>\n<p id=\"link-out\" class=\"muted\"></p>\n");
    }
}

/// Copy link: asks the service for a 6-hour link and puts it on the
/// clipboard (and on the page, for browsers that refuse the clipboard).
const SCRIPT: &str = r#"<script>
document.querySelectorAll('button[data-link]').forEach(function (b) {
  b.addEventListener('click', async function () {
    var out = document.getElementById('link-out');
    try {
      var r = await fetch(b.dataset.link, {method: 'POST', credentials: 'same-origin'});
      var j = await r.json();
      if (!r.ok) { out.textContent = j.error ? j.error.message : r.statusText; return; }
      out.textContent = j.url + ' (valid until ' + j.expires + ')';
      if (navigator.clipboard) { await navigator.clipboard.writeText(j.url); out.textContent += ' — copied'; }
    } catch (e) { out.textContent = String(e); }
  });
});
</script>
"#;
