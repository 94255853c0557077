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

use crate::cipher::{KEY_ID_LEN, STORED_PREFIX, SubjectKey, parse_stored, random};
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

/// Crypto-shredding of personal values (see the crate doc and `docs/compliance.md`).
pub struct Shredder<R> {
    fields: PersonalFields,
    keys: Arc<dyn KeyManager>,
    store: KeyStore<R>,
    cache: Mutex<Cache>,
    ttl: Duration,
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
            && text.starts_with(STORED_PREFIX)
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
        Self { fields, keys, store: KeyStore::new(pool, policy, acquire_timeout), cache: Mutex::default(), ttl }
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
        Ok(Arc::new(SubjectKey::new(key_id, &secret)?))
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
        let indexes: Vec<[u8; 32]> = missing.iter().map(|s| self.keys.subject_index(s)).collect::<AuditResult<_>>()?;
        let mut found: HashMap<Vec<u8>, KeyRow> = self
            .store
            .by_index(indexes.iter().map(|i| i.to_vec()).collect())
            .await?
            .into_iter()
            .map(|r| (r.subject_index.clone(), r))
            .collect();
        // Keys this call created and stored: used as generated, without reading them back.
        let mut created: HashMap<Vec<u8>, Arc<SubjectKey>> = HashMap::new();
        if create {
            let mut new_rows = Vec::new();
            let mut secrets = HashMap::new();
            for index in indexes.iter().filter(|i| !found.contains_key(i.as_slice())) {
                let key_id: [u8; KEY_ID_LEN] = random()?;
                let secret: [u8; 32] = random()?;
                let context = [key_id.as_slice(), index.as_slice()].concat();
                new_rows.push(KeyRow {
                    key_id: key_id.to_vec(),
                    subject_index: index.to_vec(),
                    wrapped_key: self.keys.wrap(&secret, &context).await?,
                    master_key_id: self.keys.master_key_id(),
                });
                secrets.insert(index.to_vec(), (key_id, secret));
            }
            if !new_rows.is_empty() {
                let asked: Vec<Vec<u8>> = new_rows.iter().map(|r| r.subject_index.clone()).collect();
                let inserted: HashSet<Vec<u8>> = self.store.insert(new_rows).await?.into_iter().collect();
                for index in &inserted {
                    let (key_id, secret) = &secrets[index];
                    created.insert(index.clone(), Arc::new(SubjectKey::new(*key_id, secret)?));
                }
                // A concurrent writer created the others first: everyone uses its key.
                let lost: Vec<Vec<u8>> = asked.into_iter().filter(|i| !inserted.contains(i)).collect();
                if !lost.is_empty() {
                    found.extend(self.store.by_index(lost).await?.into_iter().map(|r| (r.subject_index.clone(), r)));
                }
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
        let tag = format!("{STORED_PREFIX}{}.", hex::encode(key.key_id));
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
