//! [`Shredder`]: the [`PersonalData`] implementation — subject keys resolved (and created) in bulk, cached for a
//! bounded time, values sealed before the leaf hash and opened after the cache.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use audit_core::privacy::PrivacyFuture;
use audit_core::{
    AuditError, AuditResult, ERASED, EventFilter, KeyManager, NewEvent, PersonalData, PersonalField, PersonalFields,
    ResiliencePolicy, StoredEvent,
};
use audit_pg::PgPool;
use serde::Serialize;
use serde_json::Value;

use crate::cipher::{
    INDEX_KEY_CONTEXT, IndexKey, KEY_ID_LEN, SubjectKey, ValueFormat, fill_random, is_stored, parse_stored,
};
use crate::store::{KeyRow, KeyStore, SubjectEvents};

/// Above this many cached keys the cache starts over (a bound on memory, not a policy).
const CACHE_LIMIT: usize = 200_000;
/// Events protected on the calling task below this count; above, on a blocking thread.
const INLINE_LIMIT: usize = 64;

#[derive(Default)]
struct Cache {
    by_subject: HashMap<String, (Instant, Arc<SubjectKey>)>,
    by_id: HashMap<[u8; KEY_ID_LEN], (Instant, Option<Arc<SubjectKey>>)>,
}

/// What erasing a subject would do / did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErasurePlan {
    /// The subject key's id (hex), `None` when the subject has no key (nothing encrypted to erase).
    pub key_id: Option<String>,
    /// Events carrying the subject's encrypted values, per organisation and classification.
    pub events: Vec<SubjectEvents>,
    /// Events carrying the subject's id in clear (written with the policy off): not reachable by erasure.
    pub plaintext_events: i64,
}

impl ErasurePlan {
    /// Total events whose personal values become unreadable.
    pub fn total_events(&self) -> i64 {
        self.events.iter().map(|e| e.events).sum()
    }
}

/// What a master-key rotation did ([`Shredder::rotate_master_from`]); no secret in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MasterRotation {
    /// The master key the subject keys were wrapped under.
    pub old_master_key_id: String,
    /// The master key they are wrapped under now (this shredder's).
    pub new_master_key_id: String,
    /// Subject keys re-wrapped by this rotation.
    pub subject_keys_rewrapped: i64,
    /// Subject keys that were already under the new master key (an earlier rotation run, or created since).
    pub already_under_new: i64,
}

/// Crypto-shredding of personal values (see the crate doc and `docs/compliance.md`).
pub struct Shredder<R> {
    fields: PersonalFields,
    keys: Arc<dyn KeyManager>,
    store: KeyStore<R>,
    cache: Mutex<Cache>,
    ttl: Duration,
    /// The stored subject-index key (loaded, or first stored, on first use); `None` inside when the key manager
    /// cannot export one (then it computes indexes itself).
    index: tokio::sync::OnceCell<Option<IndexKey>>,
}

impl<R> std::fmt::Debug for Shredder<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shredder").field("fields", &self.fields.to_list()).finish_non_exhaustive()
    }
}

fn subjects_of(fields: &PersonalFields, e: &NewEvent, out: &mut HashSet<String>) {
    for f in &fields.fields {
        match f {
            PersonalField::PrincipalId => out.extend(e.principal_id.clone()),
            PersonalField::TargetResourceId => out.extend(e.target_resource_id.clone()),
            PersonalField::Detail(k) => {
                if let Some(v) = e.details.get(k).filter(|v| !v.is_null()) {
                    out.insert(PersonalFields::subject_of(f, e, &detail_text(v)));
                }
            }
        }
    }
}

fn detail_text(v: &Value) -> String {
    serde_json::to_string(v).expect("a JSON value serialises")
}

/// Seals every personal value of `e` (details first: their subject is decided on the plaintext target/principal).
fn seal_event(fields: &PersonalFields, keys: &HashMap<String, Arc<SubjectKey>>, e: &mut NewEvent) -> AuditResult<()> {
    let missing = |s: &str| AuditError::permanent(format!("no subject key was resolved for a value of `{s}`"));
    let mut sealed_details = Vec::new();
    for f in &fields.fields {
        if let PersonalField::Detail(k) = f
            && let Some(v) = e.details.get(k).filter(|v| !v.is_null())
        {
            let text = detail_text(v);
            let subject = PersonalFields::subject_of(f, e, &text);
            let key = keys.get(&subject).ok_or_else(|| missing(&f.name()))?;
            sealed_details.push((k.clone(), key.seal(&f.name(), text.as_bytes())));
        }
    }
    for (k, stored) in sealed_details {
        e.details.insert(k, Value::String(stored));
    }
    if fields.contains(&PersonalField::PrincipalId)
        && let Some(v) = &e.principal_id
    {
        let key = keys.get(v).ok_or_else(|| missing("principal_id"))?;
        e.principal_id = Some(key.seal("principal_id", v.as_bytes()));
    }
    if fields.contains(&PersonalField::TargetResourceId)
        && let Some(v) = &e.target_resource_id
    {
        let key = keys.get(v).ok_or_else(|| missing("target_resource_id"))?;
        e.target_resource_id = Some(key.seal("target_resource_id", v.as_bytes()));
    }
    Ok(())
}

/// Opens one stored value of `field`; `None` when `text` is not a stored form (left as it is).
fn open_text(keys: &HashMap<[u8; KEY_ID_LEN], Option<Arc<SubjectKey>>>, field: &str, text: &str) -> Option<Vec<u8>> {
    let (id, _) = parse_stored(text)?;
    match keys.get(&id) {
        Some(Some(key)) => match key.open(field, text) {
            Ok(p) => Some(p),
            Err(e) => {
                // Altered rows are verify's finding; the read shows what is stored.
                tracing::warn!(field, error = %e, "a stored personal value does not decrypt");
                None
            }
        },
        _ => Some(ERASED.as_bytes().to_vec()),
    }
}

fn reveal_event(keys: &HashMap<[u8; KEY_ID_LEN], Option<Arc<SubjectKey>>>, s: &mut StoredEvent) {
    let e = &mut s.event;
    for (field, slot) in [("principal_id", &mut e.principal_id), ("target_resource_id", &mut e.target_resource_id)] {
        if let Some(text) = slot.as_deref()
            && let Some(plain) = open_text(keys, field, text)
        {
            *slot = Some(String::from_utf8_lossy(&plain).into_owned());
        }
    }
    for (k, v) in e.details.iter_mut() {
        if let Value::String(text) = v
            && is_stored(text)
        {
            let field = format!("details.{k}");
            let Some((id, _)) = parse_stored(text) else { continue };
            match keys.get(&id) {
                Some(Some(_)) => {
                    if let Some(plain) = open_text(keys, &field, text) {
                        *v = serde_json::from_slice(&plain).unwrap_or_else(|_| Value::String(ERASED.into()));
                    }
                }
                _ => *v = Value::String(ERASED.into()),
            }
        }
    }
}

fn stored_ids(s: &StoredEvent, out: &mut HashSet<[u8; KEY_ID_LEN]>) {
    let e = &s.event;
    for t in [&e.principal_id, &e.target_resource_id].into_iter().flatten() {
        out.extend(parse_stored(t).map(|(id, _)| id));
    }
    for v in e.details.values() {
        if let Value::String(t) = v {
            out.extend(parse_stored(t).map(|(id, _)| id));
        }
    }
}

impl<R: ResiliencePolicy> Shredder<R> {
    /// A shredder over `pool` (the primary: keys are created and destroyed there). `ttl`: how long a process trusts
    /// a cached key — an erasure by another process takes effect here within it.
    pub fn new(
        fields: PersonalFields,
        keys: Arc<dyn KeyManager>,
        pool: PgPool,
        policy: R,
        acquire_timeout: Duration,
        ttl: Duration,
    ) -> Self {
        Self {
            fields,
            keys,
            store: KeyStore::new(pool, policy, acquire_timeout),
            cache: Mutex::default(),
            ttl,
            index: tokio::sync::OnceCell::new(),
        }
    }

    fn fresh(&self, at: Instant) -> bool {
        at.elapsed() < self.ttl
    }

    async fn unwrap_row(&self, row: &KeyRow) -> AuditResult<Arc<SubjectKey>> {
        let master = self.keys.master_key_id();
        if row.master_key_id != master {
            return Err(AuditError::integrity(format!(
                "subject key {} is wrapped under master key {}, but master key {master} is configured",
                hex::encode(&row.key_id),
                row.master_key_id
            )));
        }
        let key_id: [u8; KEY_ID_LEN] =
            row.key_id.as_slice().try_into().map_err(|_| AuditError::integrity("a subject key id is not 16 bytes"))?;
        let context = [row.key_id.as_slice(), row.subject_index.as_slice()].concat();
        let secret = self.keys.unwrap(&row.wrapped_key, &context).await?;
        Ok(Arc::new(SubjectKey::new(key_id, &secret, ValueFormat::from_code(row.value_format)?)?))
    }

    /// The subject-index key: the stored one (unwrapped under the configured master key), first stored from the
    /// key manager's own when there is none. Subject indexes thereby survive a master-key rotation.
    async fn index_key(&self) -> AuditResult<&Option<IndexKey>> {
        self.index
            .get_or_try_init(|| async {
                let master = self.keys.master_key_id();
                let stored = match self.store.index_key().await? {
                    Some(row) => Some(row),
                    None => match self.keys.subject_index_secret() {
                        None => None,
                        Some(secret) => {
                            let wrapped = self.keys.wrap(&secret, INDEX_KEY_CONTEXT).await?;
                            Some(self.store.init_index_key(wrapped, master.clone()).await?)
                        }
                    },
                };
                let Some((wrapped, id)) = stored else { return Ok(None) };
                if id != master {
                    return Err(AuditError::integrity(format!(
                        "the subject index key is wrapped under master key {id}, but master key {master} is \
                         configured (after `audit-db keys rotate-master`, every process needs the new key file)"
                    )));
                }
                let secret = self.keys.unwrap(&wrapped, INDEX_KEY_CONTEXT).await?;
                Ok(Some(IndexKey::new(&secret)))
            })
            .await
    }

    /// A new key for each subject index, wrapped under the master key in one call: one random draw for all ids
    /// and secrets. Returns each row with its id and secret.
    async fn candidate_keys(&self, indexes: &[[u8; 32]]) -> AuditResult<Vec<(KeyRow, ([u8; KEY_ID_LEN], [u8; 32]))>> {
        const ONE: usize = KEY_ID_LEN + 32;
        let mut bytes = vec![0u8; indexes.len() * ONE];
        fill_random(&mut bytes)?;
        let drawn: Vec<([u8; KEY_ID_LEN], [u8; 32])> = bytes
            .chunks_exact(ONE)
            .map(|c| {
                let (id, secret) = c.split_at(KEY_ID_LEN);
                (id.try_into().expect("KEY_ID_LEN bytes"), secret.try_into().expect("32 bytes"))
            })
            .collect();
        let contexts: Vec<Vec<u8>> =
            drawn.iter().zip(indexes).map(|((id, _), index)| [id.as_slice(), index.as_slice()].concat()).collect();
        let items: Vec<(&[u8], &[u8])> =
            drawn.iter().zip(&contexts).map(|((_, secret), c)| (secret.as_slice(), c.as_slice())).collect();
        let wrapped = self.keys.wrap_many(&items).await?;
        if wrapped.len() != indexes.len() {
            return Err(AuditError::permanent(format!(
                "the key manager wrapped {} of {} subject keys",
                wrapped.len(),
                indexes.len()
            )));
        }
        let master_key_id = self.keys.master_key_id();
        Ok(wrapped
            .into_iter()
            .zip(indexes)
            .zip(drawn)
            .map(|((wrapped_key, index), (key_id, secret))| {
                let row = KeyRow {
                    key_id: key_id.to_vec(),
                    subject_index: index.to_vec(),
                    wrapped_key,
                    master_key_id: master_key_id.clone(),
                    value_format: ValueFormat::NEW_KEYS.code(),
                };
                (row, (key_id, secret))
            })
            .collect())
    }

    /// The keys of `subjects`, from the cache or the table; with `create`, subjects without one get one.
    async fn keys_for(&self, subjects: HashSet<String>, create: bool) -> AuditResult<HashMap<String, Arc<SubjectKey>>> {
        let mut out = HashMap::with_capacity(subjects.len());
        let mut missing = Vec::new();
        {
            let cache = self.cache.lock().expect("key cache lock");
            for s in subjects {
                match cache.by_subject.get(&s) {
                    Some((at, k)) if self.fresh(*at) => {
                        out.insert(s, k.clone());
                    }
                    _ => missing.push(s),
                }
            }
        }
        if missing.is_empty() {
            return Ok(out);
        }
        let index_key = self.index_key().await?;
        let indexes: Vec<[u8; 32]> = missing
            .iter()
            .map(|s| match index_key {
                Some(k) => Ok(k.index(s)),
                None => self.keys.subject_index(s),
            })
            .collect::<AuditResult<_>>()?;
        // Stored keys first (one look-up for the whole chunk); subjects without one get a fresh key, all stored in
        // one statement (one random draw, one `wrap_many`). Keys this call stored are used as generated; a subject
        // whose key another process stored meanwhile is read back, and everyone uses the stored key.
        let mut found: HashMap<Vec<u8>, KeyRow> = self
            .store
            .by_index(indexes.iter().map(|i| i.to_vec()).collect())
            .await?
            .into_iter()
            .map(|r| (r.subject_index.clone(), r))
            .collect();
        let mut created: HashMap<Vec<u8>, Arc<SubjectKey>> = HashMap::new();
        let absent: Vec<[u8; 32]> = indexes.iter().filter(|i| !found.contains_key(i.as_slice())).copied().collect();
        if create && !absent.is_empty() {
            let candidates = self.candidate_keys(&absent).await?;
            let (rows, drawn): (Vec<KeyRow>, Vec<_>) = candidates.into_iter().unzip();
            let stored: HashSet<Vec<u8>> = self.store.create(&rows).await?.into_iter().collect();
            let mut lost = Vec::new();
            for (row, (key_id, secret)) in rows.into_iter().zip(drawn) {
                if stored.contains(&row.subject_index) {
                    let key = SubjectKey::new(key_id, &secret, ValueFormat::from_code(row.value_format)?)?;
                    created.insert(row.subject_index, Arc::new(key));
                } else {
                    lost.push(row.subject_index);
                }
            }
            if !lost.is_empty() {
                found.extend(self.store.by_index(lost).await?.into_iter().map(|r| (r.subject_index.clone(), r)));
            }
        }
        let now = Instant::now();
        let mut resolved = Vec::new();
        for (s, index) in missing.into_iter().zip(indexes) {
            if let Some(k) = created.get(index.as_slice()) {
                resolved.push((s, k.clone()));
            } else if let Some(row) = found.get(index.as_slice()) {
                resolved.push((s, self.unwrap_row(row).await?));
            }
        }
        let mut cache = self.cache.lock().expect("key cache lock");
        if cache.by_subject.len() + resolved.len() > CACHE_LIMIT {
            *cache = Cache::default();
        }
        for (s, k) in resolved {
            cache.by_id.insert(k.key_id, (now, Some(k.clone())));
            cache.by_subject.insert(s.clone(), (now, k.clone()));
            out.insert(s, k);
        }
        Ok(out)
    }

    /// Keys by id for reading; a destroyed key maps to `None` (the value reads as `[erased]`).
    async fn keys_by_id(
        &self,
        ids: HashSet<[u8; KEY_ID_LEN]>,
    ) -> AuditResult<HashMap<[u8; KEY_ID_LEN], Option<Arc<SubjectKey>>>> {
        let mut out = HashMap::with_capacity(ids.len());
        let mut missing = Vec::new();
        {
            let cache = self.cache.lock().expect("key cache lock");
            for id in ids {
                match cache.by_id.get(&id) {
                    Some((at, k)) if self.fresh(*at) => {
                        out.insert(id, k.clone());
                    }
                    _ => missing.push(id),
                }
            }
        }
        if missing.is_empty() {
            return Ok(out);
        }
        let rows = self.store.by_id(missing.iter().map(|i| i.to_vec()).collect()).await?;
        let mut loaded = HashMap::new();
        for row in &rows {
            let k = self.unwrap_row(row).await?;
            loaded.insert(k.key_id, k);
        }
        let now = Instant::now();
        let mut cache = self.cache.lock().expect("key cache lock");
        if cache.by_id.len() + missing.len() > CACHE_LIMIT {
            *cache = Cache::default();
        }
        for id in missing {
            let k = loaded.remove(&id);
            cache.by_id.insert(id, (now, k.clone()));
            out.insert(id, k);
        }
        Ok(out)
    }

    /// The subject's key, without creating one.
    async fn existing_key(&self, subject: &str) -> AuditResult<Option<Arc<SubjectKey>>> {
        let mut keys = self.keys_for(HashSet::from([subject.to_string()]), false).await?;
        Ok(keys.remove(subject))
    }

    /// What erasing `subject` would affect: its key id and the events carrying its encrypted values (per
    /// organisation and classification, for the legal-hold check), and events carrying it in clear.
    pub async fn erasure_plan(&self, subject: &str) -> AuditResult<ErasurePlan> {
        if subject.is_empty() {
            return Err(AuditError::invalid("subject: must not be empty"));
        }
        let plaintext_events = self.store.plaintext_events(subject.to_string()).await?;
        let Some(key) = self.existing_key(subject).await? else {
            return Ok(ErasurePlan { key_id: None, events: Vec::new(), plaintext_events });
        };
        let tag = key.stored_tag();
        let events = self
            .store
            .subject_events(
                key.seal("principal_id", subject.as_bytes()),
                key.seal("target_resource_id", subject.as_bytes()),
                tag,
            )
            .await?;
        Ok(ErasurePlan { key_id: Some(hex::encode(key.key_id)), events, plaintext_events })
    }

    /// Destroys the subject key with this id (hex, from [`ErasurePlan::key_id`]); `true` if it existed. Every value
    /// sealed under it reads as `[erased]` from then on, here at once and in other processes within the key-cache
    /// TTL. Checking legal holds and recording the erasure are the caller's (see `audit-server`'s `privacy`).
    pub async fn destroy_key(&self, key_id_hex: &str) -> AuditResult<bool> {
        let mut key_id = [0u8; KEY_ID_LEN];
        hex::decode_to_slice(key_id_hex, &mut key_id)
            .map_err(|_| AuditError::invalid(format!("key id `{key_id_hex}` is not 32 hex digits")))?;
        let existed = self.store.delete(key_id.to_vec()).await?;
        let mut cache = self.cache.lock().expect("key cache lock");
        cache.by_subject.retain(|_, (_, k)| k.key_id != key_id);
        cache.by_id.insert(key_id, (Instant::now(), None));
        Ok(existed)
    }

    /// Master-key rotation: re-wraps every subject key wrapped under `old` under this shredder's master key, in one
    /// transaction. Subject keys do not change, so every stored value, leaf hash, checkpoint and proof stays as it
    /// is. Refuses (changing nothing) when `old` is this master key, when a stored key is wrapped under a third
    /// master key (named in the error: the wrong old key was given), or when a key does not unwrap under `old`.
    /// Recording the rotation is the caller's (see `audit-server`'s `privacy`). Processes still holding `old` must
    /// be restarted with the new key file: keys they create meanwhile stay under `old` (run the rotation again).
    pub async fn rotate_master_from(&self, old: Arc<dyn KeyManager>) -> AuditResult<MasterRotation> {
        let (old_master_key_id, new_master_key_id) = (old.master_key_id(), self.keys.master_key_id());
        let done = self.store.rewrap(old, self.keys.clone()).await?;
        Ok(MasterRotation {
            old_master_key_id,
            new_master_key_id,
            subject_keys_rewrapped: done.rewrapped,
            already_under_new: done.already_new,
        })
    }

    /// Sealed form of the subject's own id in `field` (for equality queries), or `None` without a key.
    async fn token(&self, field: &str, subject: &str) -> AuditResult<Option<String>> {
        Ok(self.existing_key(subject).await?.map(|k| k.seal(field, subject.as_bytes())))
    }
}

impl<R: ResiliencePolicy> PersonalData for Shredder<R> {
    fn fields(&self) -> &PersonalFields {
        &self.fields
    }

    fn protect<'a>(&'a self, mut events: Vec<NewEvent>) -> PrivacyFuture<'a, AuditResult<Vec<NewEvent>>> {
        Box::pin(async move {
            if !self.fields.is_on() || events.is_empty() {
                return Ok(events);
            }
            let mut subjects = HashSet::new();
            for e in &events {
                subjects_of(&self.fields, e, &mut subjects);
            }
            let keys = self.keys_for(subjects, true).await?;
            if events.len() <= INLINE_LIMIT {
                for e in &mut events {
                    seal_event(&self.fields, &keys, e)?;
                }
                return Ok(events);
            }
            let fields = self.fields.clone();
            tokio::task::spawn_blocking(move || {
                for e in &mut events {
                    seal_event(&fields, &keys, e)?;
                }
                Ok(events)
            })
            .await
            .map_err(|e| AuditError::permanent(format!("sealing personal values failed: {e}")))?
        })
    }

    fn reveal<'a>(&'a self, mut events: Vec<StoredEvent>) -> PrivacyFuture<'a, AuditResult<Vec<StoredEvent>>> {
        Box::pin(async move {
            let mut ids = HashSet::new();
            for e in &events {
                stored_ids(e, &mut ids);
            }
            if ids.is_empty() {
                return Ok(events);
            }
            let keys = self.keys_by_id(ids).await?;
            for e in &mut events {
                reveal_event(&keys, e);
            }
            Ok(events)
        })
    }

    fn translate_filter<'a>(&'a self, filter: &'a mut EventFilter) -> PrivacyFuture<'a, AuditResult<()>> {
        Box::pin(async move {
            if !self.fields.is_on() {
                return Ok(());
            }
            // The details subject is decided on the plaintext ids, before they are rewritten.
            let detail_subject = filter.target_resource_id.clone().or_else(|| filter.principal_id.clone());
            if let (Some(subject), Some(Value::Object(wanted))) = (detail_subject, filter.details_contains.as_mut()) {
                let personal: Vec<String> =
                    self.fields.detail_keys().filter(|k| wanted.contains_key(*k)).map(str::to_string).collect();
                if !personal.is_empty()
                    && let Some(key) = self.existing_key(&subject).await?
                {
                    for k in personal {
                        let text = detail_text(&wanted[&k]);
                        wanted.insert(k.clone(), Value::String(key.seal(&format!("details.{k}"), text.as_bytes())));
                    }
                }
            }
            if self.fields.contains(&PersonalField::PrincipalId)
                && let Some(p) = filter.principal_id.clone()
                && let Some(t) = self.token("principal_id", &p).await?
            {
                filter.principal_id = Some(t);
            }
            if self.fields.contains(&PersonalField::TargetResourceId)
                && let Some(p) = filter.target_resource_id.clone()
                && let Some(t) = self.token("target_resource_id", &p).await?
            {
                filter.target_resource_id = Some(t);
            }
            Ok(())
        })
    }
}
