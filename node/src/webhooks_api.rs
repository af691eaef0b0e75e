//! The `skuld.v1.WebhookService`: webhook endpoints, their secrets and
//! dead letters. Definitions live in the store, so every node sees them and
//! the owners of the shards deliver (`sinks`).

use std::sync::Arc;

use skuld_actors::{store_error, Error, Refusal};
use skuld_cluster::Store;
use skuld_proto::v1 as pb;
use skuld_proto::v1::webhook_service_server::WebhookService;
use tonic::{Request, Response, Status};

use crate::auth::Caller;
use crate::rpc::{self, Failure};
use crate::sinks::webhook::{
    self, new_secret, secret_key, DeadLetter, Endpoint, Secret, WebhookSettings, WebhookSink,
    DEAD_LETTER_KIND, ENDPOINT_KIND, ROTATION_OVERLAP,
};
use crate::sinks::{self, CURSOR_KIND};
use crate::status;

const DEFAULT_RATE: u32 = 10;
const MAX_RATE: u32 = 1_000;
const MAX_PREFIXES: usize = 32;
/// Event ids one replay names at most (a page of dead letters).
const MAX_REPLAY_EVENT_IDS: usize = 1_000;
/// Longest webhook id accepted (`wh_` and a simple UUID).
const MAX_WEBHOOK_ID_BYTES: usize = 64;
/// Longest dead-letter page token: `<webhook id>/<event id>`.
const MAX_DEAD_LETTER_TOKEN_BYTES: usize =
    MAX_WEBHOOK_ID_BYTES + 1 + skuld_actors::key::MAX_TOKEN_BYTES;

pub struct WebhooksApi {
    store: Arc<dyn Store>,
    settings: WebhookSettings,
    client: reqwest::Client,
}

impl WebhooksApi {
    pub fn new(store: Arc<dyn Store>, settings: WebhookSettings) -> Self {
        Self {
            client: webhook::http_client(&settings),
            store,
            settings,
        }
    }

    async fn find_endpoint(&self, id: &str) -> Result<Option<Endpoint>, Error> {
        if id.is_empty() || id.len() > MAX_WEBHOOK_ID_BYTES {
            return Err(Error::invalid("id", "a webhook id (wh_...)"));
        }
        let Some(raw) = self
            .store
            .get_record(ENDPOINT_KIND, id)
            .await
            .map_err(store_error)?
        else {
            return Ok(None);
        };
        serde_json::from_slice(&raw)
            .map(Some)
            .map_err(|error| Error::Unavailable(format!("webhook {id} is unreadable: {error}")))
    }

    /// The endpoint `id`, if `caller` may manage its tenant. A caller held
    /// to some tenants gets the same PERMISSION_DENIED for an id that does
    /// not exist as for another tenant's, so it cannot probe ids; only a
    /// caller of every tenant learns that an id does not exist.
    async fn endpoint(&self, caller: Option<&Caller>, id: &str) -> Result<Endpoint, Failure> {
        // Never without one: rpc::serve refused the call already.
        let caller = caller.ok_or_else(status::unauthenticated)?;
        match self.find_endpoint(id).await? {
            Some(endpoint) => {
                caller.admit_tenant(&endpoint.tenant)?;
                Ok(endpoint)
            }
            None if caller.sees_every_tenant() => Err(Error::Refused(Refusal::FailedPrecondition(
                format!("no webhook {id:?}"),
            ))
            .into()),
            None => Err(caller.forbidden().into()),
        }
    }

    async fn save(&self, endpoint: &Endpoint) -> Result<(), Error> {
        let raw = serde_json::to_vec(endpoint)
            .map_err(|error| Error::Unavailable(format!("cannot encode a webhook: {error}")))?;
        self.store
            .put_record(ENDPOINT_KIND, &endpoint.id, raw)
            .await
            .map_err(store_error)
    }
}

fn to_proto(endpoint: &Endpoint) -> pb::Webhook {
    pb::Webhook {
        id: endpoint.id.clone(),
        tenant: endpoint.tenant.clone(),
        url: endpoint.url.clone(),
        type_prefixes: endpoint.type_prefixes.clone(),
        rate_per_second: endpoint.rate_per_second,
        enabled: endpoint.enabled,
        disabled_reason: endpoint.disabled_reason.clone(),
        created_at_ms: endpoint.created_at_ms,
    }
}

/// An http:// URL with a host; https needs the TLS work still to come.
fn validate_url(url: &str) -> Result<(), Error> {
    // Measured before it is parsed: parsing costs with the length.
    if url.len() > 2_048 {
        return Err(Error::invalid("url", "at most 2048 characters"));
    }
    let parsed = reqwest::Url::parse(url)
        .map_err(|error| Error::invalid("url", format!("not a URL: {error}")))?;
    if parsed.scheme() != "http" {
        return Err(Error::invalid(
            "url",
            "only http:// endpoints in this version (TLS is not built in yet)",
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(Error::invalid("url", "needs a host"));
    }
    Ok(())
}

fn validate_prefixes(prefixes: &[String]) -> Result<(), Error> {
    if prefixes.len() > MAX_PREFIXES
        || prefixes
            .iter()
            .any(|p| p.is_empty() || p.len() > 128 || p.chars().any(char::is_control))
    {
        return Err(Error::invalid(
            "type_prefixes",
            format!("at most {MAX_PREFIXES}, each 1 to 128 printable characters"),
        ));
    }
    Ok(())
}

#[tonic::async_trait]
impl WebhookService for WebhooksApi {
    async fn add_webhook(
        &self,
        request: Request<pb::AddWebhookRequest>,
    ) -> Result<Response<pb::AddWebhookResponse>, Status> {
        rpc::serve("AddWebhook", request, |request, _| async move {
            skuld_actors::key::validate_tenant("tenant", &request.tenant)?;
            validate_url(&request.url)?;
            validate_prefixes(&request.type_prefixes)?;
            let rate_per_second = match request.rate_per_second {
                0 => DEFAULT_RATE,
                rate if rate <= MAX_RATE => rate,
                _ => {
                    return Err(Error::invalid(
                        "rate_per_second",
                        format!("1 to {MAX_RATE}"),
                    ))
                }
            };
            let secret = if request.secret.is_empty() {
                new_secret()
            } else {
                secret_key(&request.secret)?;
                request.secret
            };
            let endpoint = Endpoint {
                id: format!("wh_{}", uuid::Uuid::new_v4().simple()),
                tenant: request.tenant,
                url: request.url,
                type_prefixes: request.type_prefixes,
                rate_per_second,
                enabled: true,
                disabled_reason: String::new(),
                created_at_ms: skuld_cluster::now_ms(),
                secrets: vec![Secret {
                    value: secret.clone(),
                    retires_at_ms: None,
                }],
            };
            // Cursors first: the endpoint gets what is committed from now on.
            sinks::start_at_heads(self.store.as_ref(), &format!("webhook/{}", endpoint.id))
                .await
                .map_err(store_error)?;
            self.save(&endpoint).await?;
            Ok(pb::AddWebhookResponse {
                webhook: Some(to_proto(&endpoint)),
                secret,
            })
        })
        .await
    }

    async fn list_webhooks(
        &self,
        request: Request<pb::ListWebhooksRequest>,
    ) -> Result<Response<pb::ListWebhooksResponse>, Status> {
        rpc::serve("ListWebhooks", request, |request, _| async move {
            if !request.tenant.is_empty() {
                skuld_actors::key::validate_tenant("tenant", &request.tenant)?;
            }
            let endpoints = webhook::load_endpoints(self.store.as_ref())
                .await
                .map_err(store_error)?;
            Ok(pb::ListWebhooksResponse {
                webhooks: endpoints
                    .iter()
                    .map(|(_, endpoint)| endpoint)
                    .filter(|endpoint| {
                        request.tenant.is_empty() || endpoint.tenant == request.tenant
                    })
                    .map(to_proto)
                    .collect(),
            })
        })
        .await
    }

    async fn remove_webhook(
        &self,
        request: Request<pb::RemoveWebhookRequest>,
    ) -> Result<Response<pb::RemoveWebhookResponse>, Status> {
        let caller = Caller::of(&request);
        rpc::serve_checked("RemoveWebhook", request, |request, _| async move {
            let endpoint = self.endpoint(caller.as_ref(), &request.id).await?;
            self.store
                .delete_record(ENDPOINT_KIND, &endpoint.id)
                .await
                .map_err(store_error)?;
            // Its cursors go too; its dead letters stay listable.
            let sink = format!("webhook/{}/", endpoint.id);
            for (id, _) in self
                .store
                .list_records(CURSOR_KIND, &sink, None, 100_000)
                .await
                .map_err(store_error)?
            {
                self.store
                    .delete_record(CURSOR_KIND, &id)
                    .await
                    .map_err(store_error)?;
            }
            Ok(pb::RemoveWebhookResponse {})
        })
        .await
    }

    async fn rotate_webhook_secret(
        &self,
        request: Request<pb::RotateWebhookSecretRequest>,
    ) -> Result<Response<pb::RotateWebhookSecretResponse>, Status> {
        let caller = Caller::of(&request);
        rpc::serve_checked("RotateWebhookSecret", request, |request, _| async move {
            let mut endpoint = self.endpoint(caller.as_ref(), &request.id).await?;
            let now = skuld_cluster::now_ms();
            let retires = now + i64::try_from(ROTATION_OVERLAP.as_millis()).unwrap_or(i64::MAX);
            endpoint
                .secrets
                .retain(|secret| secret.retires_at_ms.is_none_or(|at| at > now));
            for secret in &mut endpoint.secrets {
                secret.retires_at_ms.get_or_insert(retires);
            }
            let secret = new_secret();
            endpoint.secrets.insert(
                0,
                Secret {
                    value: secret.clone(),
                    retires_at_ms: None,
                },
            );
            self.save(&endpoint).await?;
            Ok(pb::RotateWebhookSecretResponse { secret })
        })
        .await
    }

    async fn list_dead_letters(
        &self,
        request: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListDeadLettersResponse>, Status> {
        let caller = Caller::of(&request);
        rpc::serve_checked("ListDeadLetters", request, |request, _| async move {
            if request.webhook_id.is_empty()
                || request.webhook_id.len() > MAX_WEBHOOK_ID_BYTES
                || request.webhook_id.contains('/')
            {
                return Err(Error::invalid("webhook_id", "a webhook id (wh_...)").into());
            }
            if request.page_token.len() > MAX_DEAD_LETTER_TOKEN_BYTES {
                return Err(
                    Error::invalid("page_token", "is not a token this service gave out").into(),
                );
            }
            let page_size = match request.page_size {
                0 => 100,
                n if n <= 1_000 => n as usize,
                _ => return Err(Error::invalid("page_size", "1 to 1000").into()),
            };
            // A caller of every tenant may list the dead letters of an
            // endpoint already removed; others only those of an endpoint of
            // theirs.
            if !caller.as_ref().is_some_and(Caller::sees_every_tenant) {
                self.endpoint(caller.as_ref(), &request.webhook_id).await?;
            }
            let prefix = format!("{}/", request.webhook_id);
            let after = (!request.page_token.is_empty()).then(|| request.page_token.clone());
            let page = self
                .store
                .list_records(DEAD_LETTER_KIND, &prefix, after, page_size)
                .await
                .map_err(store_error)?;
            let next_page_token = match page.last() {
                Some((id, _)) if page.len() == page_size => id.clone(),
                _ => String::new(),
            };
            let dead_letters = page
                .iter()
                .filter_map(|(_, raw)| serde_json::from_slice::<DeadLetter>(raw).ok())
                .map(|letter| pb::DeadLetter {
                    webhook_id: letter.endpoint,
                    event_id: letter.event_id,
                    event_type: letter.event_type,
                    aggregate_key: letter.aggregate_key,
                    attempts: letter.attempts,
                    last_error: letter.last_error,
                    dead_at_ms: letter.dead_at_ms,
                })
                .collect();
            Ok(pb::ListDeadLettersResponse {
                dead_letters,
                next_page_token,
            })
        })
        .await
    }

    async fn replay_dead_letters(
        &self,
        request: Request<pb::ReplayDeadLettersRequest>,
    ) -> Result<Response<pb::ReplayDeadLettersResponse>, Status> {
        let caller = Caller::of(&request);
        rpc::serve_checked("ReplayDeadLetters", request, |request, _| async move {
            // Each dead letter is looked up among the ids: bounded, so one
            // request cannot cost letters x ids comparisons without end.
            if request.event_ids.len() > MAX_REPLAY_EVENT_IDS {
                return Err(Error::invalid(
                    "event_ids",
                    format!(
                        "at most {MAX_REPLAY_EVENT_IDS} per request, got {}",
                        request.event_ids.len()
                    ),
                )
                .into());
            }
            for event_id in &request.event_ids {
                skuld_actors::key::validate_token("event_ids", event_id)?;
            }
            let endpoint = self.endpoint(caller.as_ref(), &request.webhook_id).await?;
            let sink = WebhookSink::new(
                endpoint,
                self.client.clone(),
                Arc::clone(&self.store),
                self.settings.clone(),
            )?;
            let (delivered, failed) = sink.replay(&request.event_ids).await.map_err(store_error)?;
            Ok(pb::ReplayDeadLettersResponse { delivered, failed })
        })
        .await
    }
}
