//! Credentials and region from the AWS environment variables and files.

use std::path::PathBuf;

use crate::{Error, Result};

/// Explicit credentials: an access key, its secret and a session token.
#[derive(Clone)]
pub(super) struct Credentials {
    pub(super) key_id: String,
    pub(super) secret: String,
    pub(super) token: Option<String>,
}

/// Credentials and region from the AWS environment variables and files.
pub(super) struct AwsEnv {
    pub(super) region: Option<String>,
    pub(super) credentials: Option<Credentials>,
    /// Where we looked, for the error when nothing was found.
    pub(super) looked: String,
    /// A half-configured source, worth a precise message.
    pub(super) problem: Option<String>,
}

impl AwsEnv {
    pub(super) fn read(profile: Option<&str>) -> AwsEnv {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let profile = profile
            .map(str::to_owned)
            .or_else(|| var("AWS_PROFILE"))
            .unwrap_or_else(|| "default".to_owned());
        let home = var("HOME").map(PathBuf::from);
        let file = |env: &str, name: &str| {
            var(env)
                .map(PathBuf::from)
                .or_else(|| home.as_ref().map(|h| h.join(".aws").join(name)))
        };
        let credentials_file = file("AWS_SHARED_CREDENTIALS_FILE", "credentials");
        let config_file = file("AWS_CONFIG_FILE", "config");

        let mut problem = None;
        let credentials = match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
            (Some(key_id), Some(secret)) => Some(Credentials {
                key_id,
                secret,
                token: var("AWS_SESSION_TOKEN"),
            }),
            (Some(_), None) | (None, Some(_)) => {
                problem = Some(
                    "only one of AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY is set; set both"
                        .to_owned(),
                );
                None
            }
            (None, None) => None,
        };
        let credentials = credentials.or_else(|| {
            // Half the variables is a mistake to report, not a reason to
            // fall back on some profile.
            if problem.is_some() {
                return None;
            }
            let path = credentials_file.as_ref()?;
            let text = std::fs::read_to_string(path).ok()?;
            let section = ini_section(&text, &profile)?;
            let get = |k: &str| section.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
            match (get("aws_access_key_id"), get("aws_secret_access_key")) {
                (Some(key_id), Some(secret)) => Some(Credentials {
                    key_id,
                    secret,
                    token: get("aws_session_token"),
                }),
                _ => {
                    problem.get_or_insert_with(|| {
                        format!(
                            "profile [{profile}] in {} lacks aws_access_key_id or aws_secret_access_key",
                            path.display()
                        )
                    });
                    None
                }
            }
        });
        let region = var("AWS_REGION")
            .or_else(|| var("AWS_DEFAULT_REGION"))
            .or_else(|| {
                let text = std::fs::read_to_string(config_file.as_ref()?).ok()?;
                // ~/.aws/config names profiles "[profile x]", except the default.
                let section = ini_section(&text, &format!("profile {profile}"))
                    .or_else(|| ini_section(&text, &profile))?;
                section
                    .into_iter()
                    .find(|(k, _)| k == "region")
                    .map(|(_, v)| v)
            });
        let looked = format!(
            "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, profile [{profile}] in {}",
            credentials_file
                .as_ref()
                .map_or("~/.aws/credentials (HOME is not set)".to_owned(), |p| {
                    p.display().to_string()
                })
        );
        AwsEnv {
            region,
            credentials,
            looked,
            problem,
        }
    }

    pub(super) fn credentials(&self) -> Result<Credentials> {
        if let Some(c) = &self.credentials {
            return Ok(c.clone());
        }
        let what = match &self.problem {
            Some(problem) => format!("no usable S3 credentials: {problem}"),
            None => format!(
                "no S3 credentials found (looked at {}): set AWS_ACCESS_KEY_ID and \
                 AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary ones), or write a profile",
                self.looked
            ),
        };
        Err(Error::Unauthenticated { what, source: None })
    }
}

/// The `key = value` pairs of section `[name]` of an INI file such as
/// `~/.aws/credentials`; `None` if there is no such section.
fn ini_section(text: &str, name: &str) -> Option<Vec<(String, String)>> {
    let mut found = None;
    let mut in_section = false;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with(['#', ';']) {
            continue;
        }
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_section = header.trim() == name;
            if in_section {
                found.get_or_insert_with(Vec::new);
            }
            continue;
        }
        if in_section {
            if let Some((key, value)) = line.split_once('=') {
                found
                    .get_or_insert_with(Vec::new)
                    .push((key.trim().to_owned(), value.trim().to_owned()));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_are_read_from_ini_sections() {
        let text = "\
# comment
[default]
aws_access_key_id = AKIDDEFAULT
aws_secret_access_key = secret-default

[nas]
aws_access_key_id=AKIDNAS
aws_secret_access_key=secret=with=equals
; comment
aws_session_token = tok

[profile nas]
region = eu-2
";
        let nas = ini_section(text, "nas").unwrap();
        assert_eq!(
            nas,
            [
                ("aws_access_key_id".to_owned(), "AKIDNAS".to_owned()),
                (
                    "aws_secret_access_key".to_owned(),
                    "secret=with=equals".to_owned()
                ),
                ("aws_session_token".to_owned(), "tok".to_owned()),
            ]
        );
        assert_eq!(ini_section(text, "profile nas").unwrap()[0].1, "eu-2");
        assert_eq!(ini_section(text, "default").unwrap().len(), 2);
        assert!(ini_section(text, "missing").is_none());
    }
}
