//! A `metrics` recorder for unit tests: keeps every counter increment and gauge update, in order, so that tests can
//! check what an operator would see without running an exporter.

use std::sync::{Arc, Mutex};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, SharedString, Unit};

/// One update through the `metrics` facade: metric name, labels, value.
type Update = (String, Vec<(String, String)>, f64);

/// Install with `metrics::set_default_local_recorder(&capture)` on a current-thread test.
#[derive(Default)]
pub(crate) struct Capture(Arc<Mutex<Vec<Update>>>);

impl Capture {
    /// The values recorded for metric `name`, in order, each with the value of its label `label` (empty if absent).
    pub(crate) fn by_label(&self, name: &str, label: &str) -> Vec<(String, f64)> {
        let log = self.0.lock().unwrap();
        log.iter()
            .filter(|(n, ..)| n == name)
            .map(|(_, labels, v)| {
                let value = labels.iter().find(|(k, _)| k == label).map_or(String::new(), |(_, v)| v.clone());
                (value, *v)
            })
            .collect()
    }

    fn handle(&self, key: &Key) -> Arc<Handle> {
        Arc::new(Handle { key: key.clone(), log: self.0.clone() })
    }
}

struct Handle {
    key: Key,
    log: Arc<Mutex<Vec<Update>>>,
}

impl Handle {
    fn push(&self, value: f64) {
        let labels = self.key.labels().map(|l| (l.key().to_string(), l.value().to_string())).collect();
        self.log.lock().unwrap().push((self.key.name().to_string(), labels, value));
    }
}

impl metrics::CounterFn for Handle {
    fn increment(&self, value: u64) {
        self.push(value as f64);
    }
    fn absolute(&self, value: u64) {
        self.push(value as f64);
    }
}

impl metrics::GaugeFn for Handle {
    fn increment(&self, value: f64) {
        self.push(value);
    }
    fn decrement(&self, value: f64) {
        self.push(-value);
    }
    fn set(&self, value: f64) {
        self.push(value);
    }
}

impl metrics::Recorder for Capture {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.handle(key))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.handle(key))
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}
