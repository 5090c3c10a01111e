//! A person in Keycloak's own pages, driven over HTTP as a browser would:
//! approving a device login (RFC 8628: open the verification address, sign
//! in on the login form, then accept or refuse on the consent page), or
//! signing in to a web application (the authorization code flow, up to the
//! redirect back to the application with the code). Cookies are kept by
//! hand and redirects followed one by one, so every step is Keycloak's real
//! page and form.

use std::collections::BTreeMap;

use crate::HarnessError;

/// What the person does on the consent page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Accept,
    Refuse,
}

/// Approves (or refuses) the device login at `verification_uri_complete`
/// as `user` with `password`.
pub async fn approve(
    verification_uri_complete: &str,
    user: &str,
    password: &str,
    decision: Decision,
) -> Result<(), HarnessError> {
    let mut browser = Browser::new()?;
    let login = browser.get(verification_uri_complete).await?;
    let action = form_action(&login)
        .ok_or_else(|| HarnessError::Other("no login form on the device page".into()))?;
    let consent = browser
        .post(&action, &[("username", user), ("password", password)])
        .await?;
    let action = form_action(&consent).ok_or_else(|| {
        HarnessError::Other(format!(
            "no consent form after signing in: {}",
            text(&consent)
        ))
    })?;
    let code = input_value(&consent, "code")
        .ok_or_else(|| HarnessError::Other("the consent form has no code".into()))?;
    let button = match decision {
        Decision::Accept => ("accept", "Yes"),
        Decision::Refuse => ("cancel", "No"),
    };
    browser.post(&action, &[("code", &code), button]).await?;
    Ok(())
}

/// Signs `user` in at `authorize_url` (an authorization request), and
/// returns the address Keycloak sends the browser back to, which starts
/// with `redirect_uri` and carries the `code` (not followed: the
/// application is not running).
pub async fn sign_in(
    authorize_url: &str,
    redirect_uri: &str,
    user: &str,
    password: &str,
) -> Result<reqwest::Url, HarnessError> {
    let mut browser = Browser::new()?;
    browser.stop_at = Some(redirect_uri.to_owned());
    let login = browser.get(authorize_url).await?;
    let action = form_action(&login)
        .ok_or_else(|| HarnessError::Other(format!("no login form: {}", text(&login))))?;
    let after = browser
        .post(&action, &[("username", user), ("password", password)])
        .await?;
    match browser.stopped.take() {
        Some(back) => Ok(back),
        None => Err(HarnessError::Other(format!(
            "not sent back to the application after signing in: {}",
            text(&after)
        ))),
    }
}

/// A cookie jar and manual redirects.
struct Browser {
    http: reqwest::Client,
    cookies: BTreeMap<String, String>,
    /// The address of the last page, which relative form actions are of.
    at: Option<reqwest::Url>,
    /// A redirect to an address starting with this is not followed...
    stop_at: Option<String>,
    /// ...but kept here.
    stopped: Option<reqwest::Url>,
}

impl Browser {
    fn new() -> Result<Self, HarnessError> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|source| HarnessError::Http {
                what: "a browser client".into(),
                source,
            })?;
        Ok(Self {
            http,
            cookies: BTreeMap::new(),
            at: None,
            stop_at: None,
            stopped: None,
        })
    }

    async fn get(&mut self, url: &str) -> Result<String, HarnessError> {
        self.follow(reqwest::Method::GET, url.to_owned(), None)
            .await
    }

    async fn post(&mut self, url: &str, form: &[(&str, &str)]) -> Result<String, HarnessError> {
        let url = match &self.at {
            Some(at) => at
                .join(url)
                .map_err(|e| HarnessError::Other(format!("{url}: {e}")))?
                .to_string(),
            None => url.to_owned(),
        };
        let body = form
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        self.follow(reqwest::Method::POST, url, Some(body)).await
    }

    /// Sends, then follows redirects (as GETs), keeping cookies; returns the
    /// last page.
    async fn follow(
        &mut self,
        mut method: reqwest::Method,
        mut url: String,
        mut body: Option<String>,
    ) -> Result<String, HarnessError> {
        for _ in 0..10 {
            let http_err = |source| HarnessError::Http {
                what: url.clone(),
                source,
            };
            let cookie = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ");
            let mut request = self
                .http
                .request(method.clone(), &url)
                .header("cookie", cookie);
            if let Some(body) = body.take() {
                request = request
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(body);
            }
            let response = request.send().await.map_err(http_err)?;
            for set in response.headers().get_all("set-cookie") {
                let Ok(set) = set.to_str() else { continue };
                let pair = set.split(';').next().unwrap_or_default();
                if let Some((name, value)) = pair.split_once('=') {
                    self.cookies
                        .insert(name.trim().to_owned(), value.to_owned());
                }
            }
            let status = response.status();
            self.at = Some(response.url().clone());
            if status.is_redirection() {
                let location = response
                    .headers()
                    .get("location")
                    .and_then(|l| l.to_str().ok())
                    .ok_or_else(|| HarnessError::Other(format!("{url}: a redirect to nowhere")))?;
                url = response
                    .url()
                    .join(location)
                    .map_err(|e| HarnessError::Other(e.to_string()))?
                    .to_string();
                if let Some(stop) = &self.stop_at
                    && url.starts_with(stop.as_str())
                {
                    self.stopped = reqwest::Url::parse(&url).ok();
                    return Ok(String::new());
                }
                method = reqwest::Method::GET;
                continue;
            }
            let text = response.text().await.map_err(http_err)?;
            if !status.is_success() {
                return Err(HarnessError::Status {
                    what: url,
                    status: status.as_u16(),
                    body: text,
                });
            }
            return Ok(text);
        }
        Err(HarnessError::Other(format!("{url}: too many redirects")))
    }
}

/// The first form's `action`, unescaped.
fn form_action(page: &str) -> Option<String> {
    let form = &page[page.find("<form")?..];
    let form = &form[..form.find('>')?];
    attribute(form, "action").map(|a| unescape(&a))
}

/// The `value` of the input named `name`.
fn input_value(page: &str, name: &str) -> Option<String> {
    let needle = format!("name=\"{name}\"");
    let at = page.find(&needle)?;
    let start = page[..at].rfind('<')?;
    let end = at + page[at..].find('>')?;
    attribute(&page[start..end], "value").map(|v| unescape(&v))
}

fn attribute(tag: &str, name: &str) -> Option<String> {
    let needle = format!("{name}=\"");
    let start = tag.find(&needle)? + needle.len();
    let len = tag[start..].find('"')?;
    Some(tag[start..start + len].to_owned())
}

fn unescape(text: &str) -> String {
    text.replace("&amp;", "&")
        .replace("&quot;", "\"")
        .replace("&#x3D;", "=")
        .replace("&#61;", "=")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
}

/// A page's words, for an error message.
fn text(page: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in page.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                out.push(' ');
            }
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(300)
        .collect()
}

fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
