//! Bearer tokens: who is asking, for which tenant, in which role.
//!
//! Tokens are HS256 JWTs carrying the tenant (`tenant`), the subject
//! (`sub`, the member id for members) and a role. Every read and write is
//! scoped to the token's tenant; a request without a token is anonymous
//! and scoped to the configured default tenant.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

use crate::config::AuthSettings;
use crate::domain::{MemberId, TenantId};

/// What a token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A shopper: reads their own data, checks out.
    Member,
    /// A marketing rule author of the tenant.
    RuleAuthor,
    /// An operator of the tenant.
    Operator,
}

/// The claims of a BFF token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer; must equal `auth.issuer`.
    pub iss: String,
    /// Subject: the member id for members, a staff id otherwise.
    pub sub: String,
    /// The tenant every request of this token is scoped to.
    pub tenant: TenantId,
    /// What the token allows.
    pub role: Role,
    /// Issued at (seconds since the epoch).
    pub iat: u64,
    /// Expires at (seconds since the epoch).
    pub exp: u64,
    /// Not valid before (seconds since the epoch), if the issuer set it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
}

/// The token of an `Authorization` header value in the `Bearer` scheme, or
/// `None` for another scheme or an empty token. The scheme name is
/// case-insensitive (RFC 9110 §11.1), so `bearer` and `BEARER` work too.
pub fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once([' ', '\t'])?;
    let token = token.trim();
    let well_formed = scheme.eq_ignore_ascii_case("bearer")
        && !token.is_empty()
        && !token.contains(|c: char| c.is_ascii_whitespace());
    well_formed.then_some(token)
}

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// No token: public data of the default tenant only.
    Anonymous {
        /// The tenant of public screens.
        tenant: TenantId,
    },
    /// A member of a tenant.
    Member {
        /// The member's tenant.
        tenant: TenantId,
        /// The member.
        member: MemberId,
    },
    /// A rule author or operator of a tenant.
    Staff {
        /// The staff member's tenant.
        tenant: TenantId,
        /// Their role.
        role: Role,
        /// Their id.
        subject: String,
    },
}

impl Principal {
    /// The tenant this request is scoped to.
    pub fn tenant(&self) -> &TenantId {
        match self {
            Principal::Anonymous { tenant }
            | Principal::Member { tenant, .. }
            | Principal::Staff { tenant, .. } => tenant,
        }
    }

    /// The member, if a member is asking.
    pub fn member(&self) -> Option<&MemberId> {
        match self {
            Principal::Member { member, .. } => Some(member),
            _ => None,
        }
    }
}

/// Why a presented token was refused. The client only ever learns that
/// the token is invalid; the reason is logged.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The token is expired.
    #[error("token expired")]
    Expired,
    /// The token is not valid yet (`nbf` in the future).
    #[error("token not valid yet")]
    NotYetValid,
    /// The token is valid for longer than `auth.max_token_lifetime_secs`.
    #[error("token lifetime longer than allowed")]
    TooLongLived,
    /// Bad signature, wrong issuer, malformed, or missing claims.
    #[error("token invalid: {0}")]
    Invalid(String),
}

/// Signs and verifies tokens.
#[derive(Clone)]
pub struct Authenticator {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    issuer: String,
    ttl: Duration,
    max_lifetime: u64,
    leeway: u64,
    /// Tokens whose signature and claims were checked, by their exact
    /// text: an app sends the same token with every request, and checking
    /// its HMAC is a visible share of a small request's CPU. Only the time
    /// window is checked again on a hit.
    verified: moka::sync::Cache<Box<str>, Verified>,
}

/// A token that passed every check, and its time window.
#[derive(Clone)]
struct Verified {
    principal: Principal,
    nbf: Option<u64>,
    exp: u64,
}

/// Verified tokens kept, and for how long at most.
const VERIFIED_TOKENS: u64 = 65_536;
const VERIFIED_TTL: Duration = Duration::from_secs(300);
/// Longer texts are verified every time (a token is a few hundred bytes).
const MAX_CACHED_TOKEN: usize = 2048;

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

impl Authenticator {
    /// An authenticator for the configured key and issuer.
    pub fn new(settings: &AuthSettings) -> Self {
        let secret = settings.jwt_secret.expose_secret().as_bytes();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[settings.issuer.as_str()]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = settings.leeway_secs;
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            issuer: settings.issuer.clone(),
            ttl: Duration::from_secs(settings.token_ttl_secs),
            max_lifetime: settings.max_token_lifetime_secs,
            leeway: settings.leeway_secs,
            verified: moka::sync::Cache::builder()
                .max_capacity(VERIFIED_TOKENS)
                .time_to_live(VERIFIED_TTL)
                .build(),
        }
    }

    /// Signs a token for `subject` of `tenant` in `role`, valid for the
    /// configured lifetime (or `ttl` if given, which may not exceed the
    /// longest lifetime this authenticator accepts).
    pub fn issue(
        &self,
        tenant: &TenantId,
        subject: &str,
        role: Role,
        ttl: Option<Duration>,
    ) -> Result<String, AuthError> {
        let ttl = ttl.unwrap_or(self.ttl).as_secs();
        if ttl > self.max_lifetime {
            return Err(AuthError::TooLongLived);
        }
        let iat = now();
        let claims = Claims {
            iss: self.issuer.clone(),
            sub: subject.to_owned(),
            tenant: tenant.clone(),
            role,
            iat,
            exp: iat.saturating_add(ttl),
            nbf: None,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| AuthError::Invalid(e.to_string()))
    }

    /// Verifies a token and returns who it speaks for.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        if let Some(known) = self.verified.get(token) {
            // The same checks as `jsonwebtoken`'s, with the same leeway;
            // outside its window the token is checked in full again (and
            // refused with the precise reason).
            let now = now();
            let started = known.nbf.is_none_or(|nbf| nbf <= now + self.leeway);
            let unexpired = known.exp >= now.saturating_sub(self.leeway);
            if started && unexpired {
                return Ok(known.principal);
            }
        }
        let (principal, nbf, exp) = self.verify_in_full(token)?;
        if token.len() <= MAX_CACHED_TOKEN {
            self.verified.insert(
                token.into(),
                Verified {
                    principal: principal.clone(),
                    nbf,
                    exp,
                },
            );
        }
        Ok(principal)
    }

    /// Checks a token's signature and claims.
    fn verify_in_full(&self, token: &str) -> Result<(Principal, Option<u64>, u64), AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                jsonwebtoken::errors::ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                _ => AuthError::Invalid(e.to_string()),
            })?;
        let claims = data.claims;
        // A token lives from its issue (or, if that claims to be in the
        // future, from now) to its expiry; `iat` cannot stretch it.
        let start = claims.iat.min(now());
        if claims.exp.saturating_sub(start) > self.max_lifetime.saturating_add(self.leeway) {
            return Err(AuthError::TooLongLived);
        }
        let principal = match claims.role {
            Role::Member => Principal::Member {
                tenant: claims.tenant,
                member: MemberId::parse(claims.sub)
                    .map_err(|e| AuthError::Invalid(e.to_string()))?,
            },
            role => Principal::Staff {
                tenant: claims.tenant,
                role,
                subject: claims.sub,
            },
        };
        Ok((principal, claims.nbf, claims.exp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Authenticator {
        Authenticator::new(&AuthSettings::default())
    }

    #[test]
    fn an_issued_member_token_verifies_to_that_member_and_tenant() {
        let tenant = TenantId::parse("demo").unwrap();
        let token = auth()
            .issue(&tenant, "member-1", Role::Member, None)
            .unwrap();
        let principal = auth().verify(&token).unwrap();
        assert_eq!(principal.tenant(), &tenant);
        assert_eq!(principal.member().map(|m| m.as_str()), Some("member-1"));
    }

    #[test]
    fn a_token_signed_with_another_key_or_issuer_is_refused() {
        let tenant = TenantId::parse("demo").unwrap();
        let other = Authenticator::new(&AuthSettings {
            jwt_secret: "another-secret-that-is-long-enough-123".into(),
            ..AuthSettings::default()
        });
        let token = other
            .issue(&tenant, "member-1", Role::Member, None)
            .unwrap();
        assert!(matches!(auth().verify(&token), Err(AuthError::Invalid(_))));
        let other_issuer = Authenticator::new(&AuthSettings {
            issuer: "someone-else".into(),
            ..AuthSettings::default()
        });
        let token = other_issuer
            .issue(&tenant, "member-1", Role::Member, None)
            .unwrap();
        assert!(matches!(auth().verify(&token), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn an_expired_token_is_refused_as_expired() {
        let tenant = TenantId::parse("demo").unwrap();
        let a = auth();
        let claims = Claims {
            iss: "mall-bff".into(),
            sub: "member-1".into(),
            tenant,
            role: Role::Member,
            iat: now() - 7200,
            exp: now() - 3600,
            nbf: None,
        };
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &a.encoding).unwrap();
        assert!(matches!(a.verify(&token), Err(AuthError::Expired)));
    }

    fn signed(a: &Authenticator, iat: u64, exp: u64, nbf: Option<u64>) -> String {
        let claims = Claims {
            iss: "mall-bff".into(),
            sub: "member-1".into(),
            tenant: TenantId::parse("demo").unwrap(),
            role: Role::Member,
            iat,
            exp,
            nbf,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &a.encoding).unwrap()
    }

    #[test]
    fn a_token_before_its_not_before_time_is_refused_and_accepted_after() {
        let a = auth();
        let t = now();
        let early = signed(&a, t, t + 3600, Some(t + 600));
        assert!(matches!(a.verify(&early), Err(AuthError::NotYetValid)));
        // Within the configured clock-skew leeway (30 s) it is accepted.
        let skewed = signed(&a, t, t + 3600, Some(t + 10));
        assert!(a.verify(&skewed).is_ok());
        let started = signed(&a, t - 60, t + 3600, Some(t - 30));
        assert!(a.verify(&started).is_ok());
    }

    #[test]
    fn a_token_living_longer_than_the_maximum_lifetime_is_refused() {
        let a = auth(); // at most 7 days
        let t = now();
        let week = 7 * 24 * 3600;
        assert!(a.verify(&signed(&a, t, t + week, None)).is_ok());
        let decade = signed(&a, t, t + 10 * 365 * 24 * 3600, None);
        assert!(matches!(a.verify(&decade), Err(AuthError::TooLongLived)));
        // An `iat` in the future cannot make a long-lived token look short.
        let backdated = signed(&a, t + 300 * 24 * 3600, t + 301 * 24 * 3600, None);
        assert!(matches!(a.verify(&backdated), Err(AuthError::TooLongLived)));
        // Nor can the issuer mint one.
        let tenant = TenantId::parse("demo").unwrap();
        let too_long = Duration::from_secs(week + 1);
        assert!(matches!(
            a.issue(&tenant, "member-1", Role::Member, Some(too_long)),
            Err(AuthError::TooLongLived)
        ));
    }

    #[test]
    fn a_token_verified_before_is_refused_once_it_expires() {
        // No leeway: the token is good for one more second.
        let a = Authenticator::new(&AuthSettings {
            leeway_secs: 0,
            ..AuthSettings::default()
        });
        let t = now();
        let token = signed(&a, t, t + 1, None);
        assert!(a.verify(&token).is_ok());
        assert!(a.verify(&token).is_ok(), "a known token stays good");
        std::thread::sleep(Duration::from_millis(2_100));
        assert!(matches!(a.verify(&token), Err(AuthError::Expired)));
    }

    #[test]
    fn a_known_token_changed_by_one_character_is_checked_and_refused() {
        let a = auth();
        let t = now();
        let token = signed(&a, t, t + 3600, None);
        assert!(a.verify(&token).is_ok());
        // Flip the last character of the signature.
        let mut forged = token.clone();
        let last = forged.pop().unwrap();
        forged.push(if last == 'A' { 'B' } else { 'A' });
        assert!(matches!(a.verify(&forged), Err(AuthError::Invalid(_))));
        // And a payload swapped under the known signature.
        let other = signed(&a, t, t + 7200, None);
        let (head, _) = other.rsplit_once('.').unwrap();
        let (_, sig) = token.rsplit_once('.').unwrap();
        let spliced = format!("{head}.{sig}");
        assert!(matches!(a.verify(&spliced), Err(AuthError::Invalid(_))));
        assert!(a.verify(&token).is_ok());
    }

    #[test]
    fn a_token_refused_as_not_yet_valid_is_not_remembered_as_good() {
        let a = Authenticator::new(&AuthSettings {
            leeway_secs: 0,
            ..AuthSettings::default()
        });
        let t = now();
        let early = signed(&a, t, t + 3600, Some(t + 2));
        assert!(matches!(a.verify(&early), Err(AuthError::NotYetValid)));
        assert!(matches!(a.verify(&early), Err(AuthError::NotYetValid)));
        std::thread::sleep(Duration::from_millis(3_100));
        assert!(a.verify(&early).is_ok());
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_other_schemes_are_not_bearer() {
        assert_eq!(bearer_token("Bearer abc.def"), Some("abc.def"));
        assert_eq!(bearer_token("bearer abc.def"), Some("abc.def"));
        assert_eq!(bearer_token("BEARER abc.def"), Some("abc.def"));
        assert_eq!(bearer_token("BeArEr   abc.def  "), Some("abc.def"));
        assert_eq!(bearer_token("Basic dXNlcjpwdw=="), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Bearer   "), None);
        assert_eq!(bearer_token("Bearerabc"), None);
        assert_eq!(bearer_token("Bearer a b"), None);
    }
}
