//! The Watch service: one session per stream, holding any number of
//! watches, each following the change log from its own revision.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use etcd_client::proto::{
    PbEvent, PbWatchRequest, PbWatchRequestUnion, PbWatchResponse, PbWatchService,
};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::mvcc::{KeyRange, EVENT_DELETE, EVENT_PUT};
use super::{errors, header, requires_leader, Shared};

/// `WatchCreateRequest.FilterType`.
const FILTER_NO_PUT: i32 = 0;
const FILTER_NO_DELETE: i32 = 1;

/// etcd's answer to a watch id already in use on the stream.
const DUPLICATE_WATCH_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";

pub(crate) struct WatchService {
    shared: Arc<Shared>,
}

impl WatchService {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

type WatchAnswers = Pin<Box<dyn Stream<Item = Result<PbWatchResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl PbWatchService for WatchService {
    type WatchStream = WatchAnswers;

    async fn watch(
        &self,
        request: Request<Streaming<PbWatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let leader_required = requires_leader(request.metadata());
        self.shared.admit(request.metadata(), false).await?;
        let (answers, receiver) = mpsc::channel(64);
        let session = Session {
            shared: Arc::clone(&self.shared),
            watches: BTreeMap::new(),
            next_id: 0,
            answers,
        };
        tokio::spawn(session.run(leader_required, request.into_inner()));
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}

struct Watch {
    key: Vec<u8>,
    range_end: Vec<u8>,
    /// The first revision not delivered yet.
    next_revision: i64,
    prev_kv: bool,
    progress_notify: bool,
    no_put: bool,
    no_delete: bool,
    /// Whether an event went out since the last progress tick.
    delivered: bool,
}

struct Session {
    shared: Arc<Shared>,
    watches: BTreeMap<i64, Watch>,
    next_id: i64,
    answers: mpsc::Sender<Result<PbWatchResponse, Status>>,
}

/// What a session step decided.
enum Next {
    Continue,
    End,
}

impl Session {
    async fn run(mut self, leader_required: bool, mut requests: Streaming<PbWatchRequest>) {
        let mut revisions = self.shared.revisions.subscribe();
        let mut cuts = self.shared.faults.subscribe_watch_cuts();
        let mut leaderless = self.shared.faults.subscribe_leaderless();
        let interval = self.shared.config.progress_notify_interval;
        let mut progress =
            tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        loop {
            let next = tokio::select! {
                biased;
                changed = cuts.changed() => {
                    let _ = changed;
                    let _ = self
                        .answers
                        .send(Err(Status::unavailable("sim etcd: watch stream cut")))
                        .await;
                    Next::End
                }
                changed = leaderless.changed(), if leader_required => {
                    if changed.is_err() || *leaderless.borrow_and_update() {
                        let _ = self.answers.send(Err(errors::no_leader())).await;
                        Next::End
                    } else {
                        Next::Continue
                    }
                }
                request = requests.message() => match request {
                    Ok(Some(request)) => self.handle(request).await,
                    Ok(None) | Err(_) => Next::End,
                },
                changed = revisions.changed() => match changed {
                    Ok(()) => self.deliver().await,
                    Err(_) => Next::End,
                },
                _ = progress.tick() => self.notify_progress().await,
                () = self.answers.closed() => Next::End,
            };
            if let Next::End = next {
                return;
            }
        }
    }

    async fn send(&self, answers: Vec<PbWatchResponse>) -> Next {
        for answer in answers {
            if self.answers.send(Ok(answer)).await.is_err() {
                return Next::End;
            }
        }
        Next::Continue
    }

    async fn handle(&mut self, request: PbWatchRequest) -> Next {
        match request.request_union {
            Some(PbWatchRequestUnion::CreateRequest(create)) => {
                let (answer, created) = {
                    let state = self.shared.state.lock();
                    let revision = state.mvcc.revision();
                    let mut answer = PbWatchResponse {
                        header: Some(header(state.raft_term, revision)),
                        created: true,
                        ..PbWatchResponse::default()
                    };
                    let id = if create.watch_id == 0 {
                        while self.watches.contains_key(&self.next_id) {
                            self.next_id += 1;
                        }
                        let id = self.next_id;
                        self.next_id += 1;
                        Some(id)
                    } else if self.watches.contains_key(&create.watch_id) {
                        None
                    } else {
                        Some(create.watch_id)
                    };
                    match id {
                        Some(id) => {
                            answer.watch_id = id;
                            self.watches.insert(
                                id,
                                Watch {
                                    key: create.key,
                                    range_end: create.range_end,
                                    next_revision: if create.start_revision > 0 {
                                        create.start_revision
                                    } else {
                                        revision + 1
                                    },
                                    prev_kv: create.prev_kv,
                                    progress_notify: create.progress_notify,
                                    no_put: create.filters.contains(&FILTER_NO_PUT),
                                    no_delete: create.filters.contains(&FILTER_NO_DELETE),
                                    delivered: false,
                                },
                            );
                        }
                        None => {
                            answer.watch_id = create.watch_id;
                            answer.canceled = true;
                            answer.cancel_reason = DUPLICATE_WATCH_ID.to_owned();
                        }
                    }
                    (answer, id.is_some())
                };
                if let Next::End = self.send(vec![answer]).await {
                    return Next::End;
                }
                // A watch from the past gets its history right away.
                if created {
                    return self.deliver().await;
                }
                Next::Continue
            }
            Some(PbWatchRequestUnion::CancelRequest(cancel)) => {
                if self.watches.remove(&cancel.watch_id).is_none() {
                    return Next::Continue;
                }
                let answer = {
                    let state = self.shared.state.lock();
                    PbWatchResponse {
                        header: Some(state.header()),
                        watch_id: cancel.watch_id,
                        canceled: true,
                        ..PbWatchResponse::default()
                    }
                };
                self.send(vec![answer]).await
            }
            Some(PbWatchRequestUnion::ProgressRequest(_)) => {
                // etcd 3.4 answers for the whole stream, watch id -1.
                let answer = {
                    let state = self.shared.state.lock();
                    PbWatchResponse {
                        header: Some(state.header()),
                        watch_id: -1,
                        ..PbWatchResponse::default()
                    }
                };
                self.send(vec![answer]).await
            }
            None => Next::Continue,
        }
    }

    /// Sends every watch the changes it has not had yet, in watch id order;
    /// a watch whose next revision was compacted away is cancelled.
    async fn deliver(&mut self) -> Next {
        let mut answers = Vec::new();
        let mut compacted_away = Vec::new();
        {
            let state = self.shared.state.lock();
            let revision = state.mvcc.revision();
            let compacted = state.mvcc.compacted();
            for (id, watch) in &mut self.watches {
                if watch.next_revision < compacted {
                    compacted_away.push(*id);
                    answers.push(PbWatchResponse {
                        header: Some(header(state.raft_term, revision)),
                        watch_id: *id,
                        canceled: true,
                        compact_revision: compacted,
                        ..PbWatchResponse::default()
                    });
                    continue;
                }
                let range = KeyRange {
                    key: &watch.key,
                    end: &watch.range_end,
                };
                let events: Vec<PbEvent> = state
                    .mvcc
                    .changes_since(watch.next_revision)
                    .iter()
                    .filter(|change| range.contains(&change.kv.key))
                    .filter(|change| {
                        !(change.kind == EVENT_PUT && watch.no_put
                            || change.kind == EVENT_DELETE && watch.no_delete)
                    })
                    .map(|change| PbEvent {
                        r#type: change.kind,
                        kv: Some(change.kv.clone()),
                        prev_kv: if watch.prev_kv {
                            change.prev.clone()
                        } else {
                            None
                        },
                    })
                    .collect();
                watch.next_revision = watch.next_revision.max(revision + 1);
                if events.is_empty() {
                    continue;
                }
                watch.delivered = true;
                answers.push(PbWatchResponse {
                    header: Some(header(state.raft_term, revision)),
                    watch_id: *id,
                    events,
                    ..PbWatchResponse::default()
                });
            }
        }
        for id in compacted_away {
            self.watches.remove(&id);
        }
        self.send(answers).await
    }

    /// Tells each watch with progress_notify that heard nothing since the
    /// last tick where the store is.
    async fn notify_progress(&mut self) -> Next {
        let answers: Vec<PbWatchResponse> = {
            let state = self.shared.state.lock();
            self.watches
                .iter_mut()
                .filter_map(|(id, watch)| {
                    let quiet = !std::mem::take(&mut watch.delivered);
                    (watch.progress_notify && quiet).then(|| PbWatchResponse {
                        header: Some(state.header()),
                        watch_id: *id,
                        ..PbWatchResponse::default()
                    })
                })
                .collect()
        };
        self.send(answers).await
    }
}
