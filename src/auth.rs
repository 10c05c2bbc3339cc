//! Who is connecting: JWT verification and the identity a socket carries (SPEC §2).
//!
//! A token may arrive in three places (the socket.io v4 `auth.token`, the `?token=` query string
//! that Flask-SocketIO clients use, or an `Authorization: Bearer` header). It is verified with the
//! key that matches its algorithm's family, so an RSA public key can never be used as an HMAC
//! secret, and only algorithms listed in `auth.algorithms` are accepted.

use std::collections::HashSet;
use std::fmt;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::Value;

use crate::configuration::AuthSettings;

/// The verified claims a socket keeps for its lifetime.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    pub user_id: String,
    pub role: Option<String>,
    pub projects: Vec<String>,
    /// Expiry (seconds since the epoch).
    pub expires_at: u64,
    /// The device the socket is on (`web`, `mobile`, ...): the token's device claim, else the
    /// client's `auth.device`. It joins the socket to the user's device room.
    pub device: Option<String>,
}

/// A device name: 1 to 32 ASCII letters, digits, `-`, `_` or `.`.
pub fn valid_device(device: &str) -> bool {
    (1..=32).contains(&device.len()) && device.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Why a connection was refused. `Display` is the exact `connect_error` message of SPEC §2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    MissingToken,
    InvalidToken,
    TokenExpired,
    TooManyConnections,
    ServerFull,
    RateLimited,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::MissingToken => "missing token",
            Refusal::InvalidToken => "invalid token",
            Refusal::TokenExpired => "token expired",
            Refusal::TooManyConnections => "too many connections",
            Refusal::ServerFull => "server full",
            Refusal::RateLimited => "rate limited",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Verifies tokens with the configured keys and algorithms.
pub struct Verifier {
    algorithms: HashSet<Algorithm>,
    hmac: Option<DecodingKey>,
    rsa: Option<DecodingKey>,
    ec: Option<DecodingKey>,
    user_claim: String,
    device_claim: String,
    leeway: u64,
}

impl Verifier {
    pub fn new(settings: &AuthSettings) -> anyhow::Result<Verifier> {
        let mut algorithms = HashSet::new();
        for name in &settings.algorithms {
            let alg: Algorithm = name.trim().parse().map_err(|_| anyhow::anyhow!("auth.algorithms: unknown algorithm {name:?}"))?;
            algorithms.insert(alg);
        }
        let hmac = (!settings.jwt_secret.is_empty()).then(|| DecodingKey::from_secret(settings.jwt_secret.as_bytes()));
        let (mut rsa, mut ec) = (None, None);
        if !settings.public_key_pem.is_empty() {
            let pem = std::fs::read(&settings.public_key_pem)
                .map_err(|e| anyhow::anyhow!("auth.public_key_pem: cannot read {}: {e}", settings.public_key_pem))?;
            rsa = DecodingKey::from_rsa_pem(&pem).ok();
            ec = DecodingKey::from_ec_pem(&pem).ok();
            if rsa.is_none() && ec.is_none() {
                anyhow::bail!("auth.public_key_pem: {} is neither an RSA nor an EC public key", settings.public_key_pem);
            }
        }
        Ok(Verifier { algorithms, hmac, rsa, ec, user_claim: settings.user_claim.clone(), device_claim: settings.device_claim.clone(), leeway: settings.leeway_secs })
    }

    fn key_for(&self, alg: Algorithm) -> Option<&DecodingKey> {
        use Algorithm::*;
        match alg {
            HS256 | HS384 | HS512 => self.hmac.as_ref(),
            RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => self.rsa.as_ref(),
            ES256 | ES384 => self.ec.as_ref(),
            EdDSA => None,
        }
    }

    pub fn verify(&self, token: &str) -> Result<Identity, Refusal> {
        // `alg: none` and unknown algorithms fail to parse here.
        let header = jsonwebtoken::decode_header(token).map_err(|_| Refusal::InvalidToken)?;
        if !self.algorithms.contains(&header.alg) {
            return Err(Refusal::InvalidToken);
        }
        let key = self.key_for(header.alg).ok_or(Refusal::InvalidToken)?;
        let mut validation = Validation::new(header.alg);
        validation.set_required_spec_claims(&["exp"]);
        validation.validate_nbf = true;
        validation.leeway = self.leeway;
        let data = jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, key, &validation).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => Refusal::TokenExpired,
            _ => Refusal::InvalidToken,
        })?;
        self.identity(&data.claims).ok_or(Refusal::InvalidToken)
    }

    fn identity(&self, claims: &serde_json::Map<String, Value>) -> Option<Identity> {
        let user_id = claims.get(&self.user_claim).and_then(scalar_to_string).or_else(|| claims.get("sub").and_then(scalar_to_string))?;
        let role = claims.get("role").and_then(scalar_to_string);
        let projects = match claims.get("projects") {
            Some(Value::Array(items)) => items.iter().filter_map(scalar_to_string).collect(),
            _ => vec![],
        };
        // RFC 7519 allows a fractional NumericDate (PyJWT writes one for `time.time() + ttl`).
        let expires_at = claims.get("exp").and_then(Value::as_f64).filter(|e| *e >= 0.0)? as u64;
        // A device claim that is not a valid name is ignored: the token is still good.
        let device = claims.get(&self.device_claim).and_then(scalar_to_string).filter(|d| valid_device(d));
        Some(Identity { user_id, role, projects, expires_at, device })
    }
}

/// A user id, role or project may be a JSON number or a non-empty string; both render as text.
fn scalar_to_string(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Finds the token a client presented, in SPEC order: `auth.token`, `?token=`, `Authorization`.
pub fn find_token(auth: Option<&Value>, query: Option<&str>, authorization: Option<&str>) -> Option<String> {
    if let Some(token) = auth.and_then(|a| a.get("token")).and_then(Value::as_str) {
        if !token.is_empty() {
            return Some(token.to_string());
        }
    }
    if let Some(query) = query {
        for (key, value) in form_urlencoded_pairs(query) {
            if key == "token" && !value.is_empty() {
                return Some(value);
            }
        }
    }
    authorization
        .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(String::from)
}

/// The first non-empty value of `key` in a query string, decoded.
pub fn query_param(query: &str, key: &str) -> Option<String> {
    form_urlencoded_pairs(query).find(|(k, v)| k == key && !v.is_empty()).map(|(_, v)| v)
}

/// Splits `a=1&b=x%20y` into decoded pairs.
fn form_urlencoded_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query.split('&').filter_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        Some((percent_decode(k)?, percent_decode(v)?))
    })
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Mints a token for development (`herald token`), signed with the HS256 secret.
pub fn mint_dev_token(secret: &str, user_id: &str, role: Option<&str>, projects: &[String], ttl_secs: u64) -> anyhow::Result<String> {
    let exp = now_secs() + ttl_secs;
    let mut claims = serde_json::json!({ "user_id": user_id, "exp": exp, "iat": now_secs() });
    if let Some(role) = role {
        claims["role"] = role.into();
    }
    if !projects.is_empty() {
        claims["projects"] = projects.into();
    }
    Ok(jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.as_bytes()))?)
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier(secret: &str) -> Verifier {
        Verifier::new(&AuthSettings { jwt_secret: secret.into(), ..Default::default() }).unwrap()
    }

    #[test]
    fn numeric_and_string_user_ids_render_as_text() {
        let v = verifier("s");
        let t = mint_dev_token("s", "42", Some("admin"), &["7".into()], 60).unwrap();
        let id = v.verify(&t).unwrap();
        assert_eq!(id.user_id, "42");
        assert_eq!(id.role.as_deref(), Some("admin"));
        assert_eq!(id.projects, vec!["7".to_string()]);
        let claims = serde_json::json!({"user_id": 42, "exp": now_secs() + 60});
        let t = jsonwebtoken::encode(&Header::default(), &claims, &EncodingKey::from_secret(b"s")).unwrap();
        assert_eq!(v.verify(&t).unwrap().user_id, "42");
    }

    #[test]
    fn fractional_exp_is_a_valid_numeric_date() {
        let claims = serde_json::json!({"user_id": 1, "exp": now_secs() as f64 + 60.5});
        let t = jsonwebtoken::encode(&Header::default(), &claims, &EncodingKey::from_secret(b"s")).unwrap();
        assert_eq!(verifier("s").verify(&t).unwrap().user_id, "1");
    }

    #[test]
    fn sub_is_the_fallback_user_claim() {
        let claims = serde_json::json!({"sub": "abc", "exp": now_secs() + 60});
        let t = jsonwebtoken::encode(&Header::default(), &claims, &EncodingKey::from_secret(b"s")).unwrap();
        assert_eq!(verifier("s").verify(&t).unwrap().user_id, "abc");
    }

    #[test]
    fn refusals_name_the_reason() {
        let v = verifier("s");
        let expired = serde_json::json!({"user_id": 1, "exp": now_secs() - 10});
        let t = jsonwebtoken::encode(&Header::default(), &expired, &EncodingKey::from_secret(b"s")).unwrap();
        assert_eq!(v.verify(&t), Err(Refusal::TokenExpired));
        let no_exp = serde_json::json!({"user_id": 1});
        let t = jsonwebtoken::encode(&Header::default(), &no_exp, &EncodingKey::from_secret(b"s")).unwrap();
        assert_eq!(v.verify(&t), Err(Refusal::InvalidToken));
        let t = mint_dev_token("other", "1", None, &[], 60).unwrap();
        assert_eq!(v.verify(&t), Err(Refusal::InvalidToken));
        // alg: none
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJ1c2VyX2lkIjoxLCJleHAiOjk5OTk5OTk5OTl9.";
        assert_eq!(v.verify(none), Err(Refusal::InvalidToken));
        assert_eq!(v.verify("garbage"), Err(Refusal::InvalidToken));
    }

    #[test]
    fn token_is_found_in_each_carrier() {
        let auth = serde_json::json!({"token": "a"});
        assert_eq!(find_token(Some(&auth), Some("token=b"), Some("Bearer c")).as_deref(), Some("a"));
        assert_eq!(find_token(None, Some("EIO=4&token=b%2Ec&transport=websocket"), None).as_deref(), Some("b.c"));
        assert_eq!(find_token(None, Some("EIO=4"), Some("Bearer c")).as_deref(), Some("c"));
        assert_eq!(find_token(None, None, None), None);
    }
}
