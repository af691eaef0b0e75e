//! The NATS JetStream sink: every event published to
//! `skuld.<tenant>.<type>` with `Nats-Msg-Id` = the event id, as a
//! CloudEvent, and acknowledged by JetStream before the sink's cursor moves.
//!
//! JetStream drops a resend with the same `Nats-Msg-Id` only within its
//! duplicate window (2 minutes here), so the durable cursor, not the
//! window, is what keeps a restarted sink from publishing everything again;
//! the window covers the resends of the one window in flight at a crash.

use std::time::Duration;

use async_nats::jetstream;
use async_trait::async_trait;
use skuld_actors::runtime::published::PublishedEvent;
use tokio_util::sync::CancellationToken;

use super::{cloud_event, Delivery, Sink, Stopped};

#[derive(Debug, Clone)]
pub struct NatsSettings {
    pub url: String,
    pub stream: String,
}

pub struct NatsSink {
    jetstream: jetstream::Context,
    stream: String,
}

/// A subject token from free text: NATS subjects are split on `.` and give
/// `*`, `>` and whitespace a meaning, so those become `_`.
fn subject_token(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c == '.' || c == '*' || c == '>' || c.is_whitespace() || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect()
}

/// `skuld.<tenant>.<type>`; the type keeps its dots as subject levels.
pub fn subject(event: &PublishedEvent) -> String {
    let event_type = event
        .event_type
        .strip_prefix("skuld.")
        .unwrap_or(&event.event_type);
    let levels: Vec<String> = event_type.split('.').map(subject_token).collect();
    format!(
        "skuld.{}.{}",
        subject_token(&event.tenant),
        levels.join(".")
    )
}

impl NatsSink {
    pub async fn connect(settings: NatsSettings) -> anyhow::Result<Self> {
        let client = async_nats::connect(&settings.url).await?;
        let jetstream = jetstream::new(client);
        jetstream
            .get_or_create_stream(jetstream::stream::Config {
                name: settings.stream.clone(),
                subjects: vec!["skuld.>".into()],
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await?;
        Ok(Self {
            jetstream,
            stream: settings.stream,
        })
    }

    async fn publish(&self, delivery: &Delivery) -> Result<(), String> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", delivery.event.id.as_str());
        headers.insert("Content-Type", "application/cloudevents+json");
        let ack = self
            .jetstream
            .publish_with_headers(
                subject(&delivery.event),
                headers,
                cloud_event(delivery).into(),
            )
            .await
            .map_err(|error| error.to_string())?;
        ack.await.map_err(|error| error.to_string())?;
        Ok(())
    }
}

#[async_trait]
impl Sink for NatsSink {
    fn name(&self) -> String {
        format!("nats/{}", self.stream)
    }

    fn wants(&self, _event: &PublishedEvent) -> bool {
        true
    }

    async fn deliver(
        &self,
        events: Vec<Delivery>,
        stop: &CancellationToken,
    ) -> Result<(), Stopped> {
        for delivery in &events {
            let mut wait = Duration::from_millis(100);
            loop {
                let published = tokio::select! {
                    published = self.publish(delivery) => published,
                    () = stop.cancelled() => return Err(Stopped::Final("stopping".into())),
                };
                match published {
                    Ok(()) => {
                        metrics::counter!("skuld_nats_published_total").increment(1);
                        break;
                    }
                    Err(error) => {
                        metrics::counter!("skuld_nats_publish_errors_total").increment(1);
                        tracing::warn!(%error, event = %delivery.event.id, "NATS publish failed; retrying");
                        tokio::select! {
                            () = tokio::time::sleep(wait) => {}
                            () = stop.cancelled() => return Err(Stopped::Final("stopping".into())),
                        }
                        wait = (wait * 2).min(Duration::from_secs(5));
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_keep_type_levels_and_neutralise_the_tenant() {
        let event = PublishedEvent {
            id: "e".into(),
            event_type: "skuld.inventory.reservation.created.v1".into(),
            tenant: "acme.eu *>".into(),
            aggregate_kind: "position".into(),
            aggregate_key: "k".into(),
            aggregate_version: 1,
            index: 0,
            occurred_at_ms: 0,
            correlation_id: String::new(),
            causation_id: String::new(),
            idempotency_key: None,
            data: Vec::new(),
        };
        assert_eq!(
            subject(&event),
            "skuld.acme_eu___.inventory.reservation.created.v1"
        );
    }
}
