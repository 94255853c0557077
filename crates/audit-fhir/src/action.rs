//! audit-db `action` text ↔ AuditEvent `type`, first `subtype` and `action` code.
//!
//! Export ([`coding_for`]) tries, in order: the seed's actions that have a natural standard code (table
//! [`NAMED`]), structured names (`rest.<interaction>`, `dicom.<event id>[.<event type>]`), the generic form
//! `fhir|<C/R/U/D/E>|<type system>|<type code>[|<subtype system>|<subtype code>]`, and otherwise audit-db's own
//! action code system. Import ([`action_for`]) picks the first name whose export gives back exactly the same
//! codes and action code, falling back to the generic form, so that for every AuditEvent,
//! `coding_for(action_for(x)) == x` (compared by system and code): a foreign event's type, subtype and action code
//! survive ingest and export even though audit-db stores only the action text.

use crate::codes::{self, DicomCode};
use crate::escape::{escape, unescape};
use crate::model::Coding;

/// `AuditEvent.action`: the kind of operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ActionCode {
    /// Create.
    C,
    /// Read/view/print.
    R,
    /// Update.
    U,
    /// Delete.
    D,
    /// Execute (anything else).
    E,
}

impl ActionCode {
    /// Every value.
    pub const ALL: [ActionCode; 5] = [ActionCode::C, ActionCode::R, ActionCode::U, ActionCode::D, ActionCode::E];

    /// The FHIR code.
    pub fn as_str(self) -> &'static str {
        match self {
            ActionCode::C => "C",
            ActionCode::R => "R",
            ActionCode::U => "U",
            ActionCode::D => "D",
            ActionCode::E => "E",
        }
    }

    /// Parses the FHIR code exactly.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// What an action maps to: the event's type, its first subtype and the action code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventCoding {
    /// `AuditEvent.type`.
    pub type_: Coding,
    /// `AuditEvent.subtype[0]`.
    pub subtype: Option<Coding>,
    /// `AuditEvent.action`.
    pub action: Option<ActionCode>,
}

impl EventCoding {
    /// Equal as FHIR compares codes: by system and code, displays ignored.
    pub fn same_codes(&self, other: &EventCoding) -> bool {
        self.type_.key() == other.type_.key()
            && self.subtype.as_ref().map(Coding::key) == other.subtype.as_ref().map(Coding::key)
            && self.action == other.action
    }
}

/// When an import may choose a named action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnImport {
    /// Never: another action with the same codes is preferred.
    Never,
    /// Always when the codes match.
    Always,
    /// Only when the event's target is a FHIR Patient (BALP's PatientRead pattern).
    WhenPatientTarget,
}

/// Where a named action's codes come from.
#[derive(Debug, Clone, Copy)]
enum Standard {
    /// DICOM event ID and optional event type code.
    Dicom(&'static str, Option<&'static str>),
    /// FHIR `rest` with this restful interaction.
    Rest(&'static str),
}

/// An action of the seed's vocabulary with a natural standard code.
#[derive(Debug, Clone, Copy)]
struct Named {
    action: &'static str,
    codes: Standard,
    code: ActionCode,
    on_import: OnImport,
}

const fn named(action: &'static str, codes: Standard, code: ActionCode, on_import: OnImport) -> Named {
    Named { action, codes, code, on_import }
}

/// The seed's actions (docs and workload generator) that map to BALP/DICOM codes.
const NAMED: &[Named] = &[
    named("user_authentication", Standard::Dicom("110114", Some("110122")), ActionCode::E, OnImport::Always),
    named("user_login", Standard::Dicom("110114", Some("110122")), ActionCode::E, OnImport::Never),
    named("user_logout", Standard::Dicom("110114", Some("110123")), ActionCode::E, OnImport::Always),
    named("mfa_challenge", Standard::Dicom("110114", None), ActionCode::E, OnImport::Never),
    named("password_reset", Standard::Dicom("110113", Some("110137")), ActionCode::U, OnImport::Never),
    named("patient_data_access", Standard::Rest("read"), ActionCode::R, OnImport::WhenPatientTarget),
    named("lab_result_view", Standard::Rest("read"), ActionCode::R, OnImport::Never),
    named("patient_record_update", Standard::Rest("update"), ActionCode::U, OnImport::Never),
    named("prescription_write", Standard::Rest("create"), ActionCode::C, OnImport::Never),
];

/// Longest action audit-db accepts (the column's size).
const MAX_ACTION_CHARS: usize = audit_core::validate::MAX_ID_CHARS;

fn dicom_coding(table: &[DicomCode], code: &str) -> Option<Coding> {
    table.iter().find(|d| d.code == code).map(|d| Coding::new(codes::DICOM, d.code, d.display))
}

fn rest_coding(interaction: &str) -> EventCoding {
    EventCoding {
        type_: Coding::new(codes::AUDIT_EVENT_TYPE, "rest", "Restful Operation"),
        subtype: Some(Coding::new(codes::RESTFUL_INTERACTION, interaction, interaction)),
        action: Some(rest_action_code(interaction)),
    }
}

/// BALP's action code for each RESTful interaction: searches, history and operations are Execute.
fn rest_action_code(interaction: &str) -> ActionCode {
    match interaction {
        "create" => ActionCode::C,
        "read" | "vread" => ActionCode::R,
        "update" | "patch" => ActionCode::U,
        "delete" => ActionCode::D,
        _ => ActionCode::E,
    }
}

/// DICOM PS3.15's action code for each event ID, Execute where the standard leaves it to the event.
fn dicom_action_code(event_id: &str) -> ActionCode {
    match event_id {
        "110101" | "110103" | "110106" => ActionCode::R,
        "110105" => ActionCode::D,
        "110107" => ActionCode::C,
        _ => ActionCode::E,
    }
}

fn named_coding(n: &Named) -> EventCoding {
    match n.codes {
        Standard::Dicom(id, sub) => EventCoding {
            type_: dicom_coding(codes::DICOM_EVENT_IDS, id).expect("table codes are DICOM event IDs"),
            subtype: sub.map(|s| dicom_coding(codes::DICOM_EVENT_TYPES, s).expect("table codes are DICOM types")),
            action: Some(n.code),
        },
        Standard::Rest(i) => EventCoding { action: Some(n.code), ..rest_coding(i) },
    }
}

/// `rest.<interaction>` and `dicom.<event id name>[.<event type name>]`.
fn structured_coding(action: &str) -> Option<EventCoding> {
    if let Some(i) = action.strip_prefix("rest.") {
        return codes::RESTFUL_INTERACTIONS.contains(&i).then(|| rest_coding(i));
    }
    let rest = action.strip_prefix("dicom.")?;
    let (id_name, sub_name) = match rest.split_once('.') {
        Some((a, b)) => (a, Some(b)),
        None => (rest, None),
    };
    let id = codes::DICOM_EVENT_IDS.iter().find(|d| d.name == id_name)?;
    let subtype = match sub_name {
        None => None,
        Some(s) => Some(codes::DICOM_EVENT_TYPES.iter().find(|d| d.name == s)?),
    };
    Some(EventCoding {
        type_: Coding::new(codes::DICOM, id.code, id.display),
        subtype: subtype.map(|d| Coding::new(codes::DICOM, d.code, d.display)),
        action: Some(dicom_action_code(id.code)),
    })
}

fn structured_name(ec: &EventCoding) -> Option<String> {
    let t = &ec.type_;
    if t.is(codes::AUDIT_EVENT_TYPE, "rest") {
        let s = ec.subtype.as_ref()?;
        if s.system.as_deref() != Some(codes::RESTFUL_INTERACTION) {
            return None;
        }
        return s.code.as_deref().map(|i| format!("rest.{i}"));
    }
    if t.system.as_deref() != Some(codes::DICOM) {
        return None;
    }
    let id = codes::DICOM_EVENT_IDS.iter().find(|d| Some(d.code) == t.code.as_deref())?;
    match &ec.subtype {
        None => Some(format!("dicom.{}", id.name)),
        Some(s) if s.system.as_deref() == Some(codes::DICOM) => {
            let sub = codes::DICOM_EVENT_TYPES.iter().find(|d| Some(d.code) == s.code.as_deref())?;
            Some(format!("dicom.{}.{}", id.name, sub.name))
        }
        Some(_) => None,
    }
}

const GENERIC_PREFIX: &str = "fhir";
const SEP: char = '|';

fn generic_name(ec: &EventCoding) -> String {
    let part = |v: &Option<String>| v.as_deref().map(|s| escape(s, &[SEP])).unwrap_or_default();
    let mut parts = vec![
        GENERIC_PREFIX.to_string(),
        ec.action.map(|a| a.as_str().to_string()).unwrap_or_default(),
        part(&ec.type_.system),
        part(&ec.type_.code),
    ];
    if let Some(s) = &ec.subtype {
        parts.push(part(&s.system));
        parts.push(part(&s.code));
    }
    parts.join("|")
}

fn parse_generic(action: &str) -> Option<EventCoding> {
    let parts: Vec<&str> = action.split(SEP).collect();
    if parts.first() != Some(&GENERIC_PREFIX) || !(parts.len() == 4 || parts.len() == 6) {
        return None;
    }
    let part = |s: &str| -> Option<Option<String>> { if s.is_empty() { Some(None) } else { unescape(s).map(Some) } };
    let code = match parts[1] {
        "" => None,
        c => Some(ActionCode::parse(c)?),
    };
    let coding = |sys: &str, code: &str| -> Option<Coding> {
        Some(Coding { system: part(sys)?, code: part(code)?, display: None })
    };
    let subtype = if parts.len() == 6 { Some(coding(parts[4], parts[5])?) } else { None };
    Some(EventCoding { type_: coding(parts[2], parts[3])?, subtype, action: code })
}

/// The action code of an action with no standard code: the first word (snake_case, kebab-case, camelCase or
/// spaced) that names an operation decides; otherwise Execute.
pub fn guess_action_code(action: &str) -> ActionCode {
    const D: &[&str] = &[
        "delete",
        "deleted",
        "deletion",
        "remove",
        "removed",
        "removal",
        "erase",
        "erased",
        "erasure",
        "purge",
        "purged",
        "destroy",
        "destroyed",
        "revoke",
        "revoked",
    ];
    const C: &[&str] = &[
        "create",
        "created",
        "creation",
        "add",
        "added",
        "insert",
        "inserted",
        "register",
        "registered",
        "write",
        "written",
        "new",
        "issue",
        "issued",
        "upload",
        "uploaded",
        "import",
        "imported",
    ];
    const U: &[&str] = &[
        "update", "updated", "modify", "modified", "edit", "edited", "change", "changed", "patch", "patched", "set",
        "reset", "rename", "renamed", "amend", "amended",
    ];
    const R: &[&str] = &[
        "read",
        "access",
        "accessed",
        "view",
        "viewed",
        "get",
        "fetch",
        "fetched",
        "download",
        "downloaded",
        "export",
        "exported",
        "print",
        "printed",
        "open",
        "opened",
        "retrieve",
        "retrieved",
        "display",
        "displayed",
    ];
    for word in words(action) {
        for (list, code) in [(D, ActionCode::D), (C, ActionCode::C), (U, ActionCode::U), (R, ActionCode::R)] {
            if list.contains(&word.as_str()) {
                return code;
            }
        }
    }
    ActionCode::E
}

/// Lower-case words of an identifier: split at non-alphanumerics and at lower→upper case changes.
fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut prev_lower = false;
    for c in text.chars() {
        if !c.is_alphanumeric() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            prev_lower = false;
            continue;
        }
        if c.is_uppercase() && prev_lower && !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
        prev_lower = c.is_lowercase() || c.is_numeric();
        cur.extend(c.to_lowercase());
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn own_coding(action: &str) -> EventCoding {
    EventCoding {
        type_: Coding::new(codes::cs::ACTION, &escape(action, &[]), action),
        subtype: None,
        action: Some(guess_action_code(action)),
    }
}

/// The type, subtype and action code an action is exported with.
pub fn coding_for(action: &str) -> EventCoding {
    if let Some(n) = NAMED.iter().find(|n| n.action == action) {
        return named_coding(n);
    }
    structured_coding(action).or_else(|| parse_generic(action)).unwrap_or_else(|| own_coding(action))
}

/// The action an AuditEvent without audit-db's action extension is ingested with; `Err` names why none fits
/// (only when the generic form would be longer than an action may be).
pub fn action_for(ec: &EventCoding, patient_target: bool) -> Result<String, String> {
    let named = NAMED.iter().filter(|n| match n.on_import {
        OnImport::Never => false,
        OnImport::Always => true,
        OnImport::WhenPatientTarget => patient_target,
    });
    let own = (ec.type_.system.as_deref() == Some(codes::cs::ACTION) && ec.subtype.is_none())
        .then(|| ec.type_.code.as_deref().and_then(unescape))
        .flatten();
    let candidates = named.map(|n| n.action.to_string()).chain(structured_name(ec)).chain(own);
    for c in candidates {
        if coding_for(&c).same_codes(ec) && valid_action(&c) {
            return Ok(c);
        }
    }
    let generic = generic_name(ec);
    let n = generic.chars().count();
    if n > MAX_ACTION_CHARS {
        return Err(format!(
            "its codes need {n} characters as an audit-db action (`{}…`), more than {MAX_ACTION_CHARS}",
            generic.chars().take(60).collect::<String>()
        ));
    }
    Ok(generic)
}

/// What audit-core's validator accepts as an action.
fn valid_action(a: &str) -> bool {
    !a.trim().is_empty() && a.chars().count() <= MAX_ACTION_CHARS && !a.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn roundtrip(action: &str) -> String {
        action_for(&coding_for(action), false).unwrap()
    }

    #[test]
    fn seed_actions_take_standard_codes() {
        let login = coding_for("user_authentication");
        assert!(login.type_.is(codes::DICOM, "110114"));
        assert!(login.subtype.as_ref().unwrap().is(codes::DICOM, "110122"));
        assert_eq!(login.action, Some(ActionCode::E));
        let read = coding_for("patient_data_access");
        assert!(read.type_.is(codes::AUDIT_EVENT_TYPE, "rest"));
        assert!(read.subtype.as_ref().unwrap().is(codes::RESTFUL_INTERACTION, "read"));
        assert_eq!(read.action, Some(ActionCode::R));
        let pay = coding_for("payment_processed");
        assert!(pay.type_.is(codes::cs::ACTION, "payment_processed"));
        assert_eq!(pay.action, Some(ActionCode::E));
        assert_eq!(coding_for("user login").type_.code.as_deref(), Some("user%20login"));
    }

    #[test]
    fn import_prefers_seed_names_then_structured_names() {
        assert_eq!(roundtrip("user_authentication"), "user_authentication");
        assert_eq!(roundtrip("user_login"), "user_authentication");
        assert_eq!(roundtrip("lab_result_view"), "rest.read");
        assert_eq!(action_for(&coding_for("lab_result_view"), true).unwrap(), "patient_data_access");
        assert_eq!(roundtrip("mfa_challenge"), "dicom.user_authentication");
        assert_eq!(
            roundtrip("dicom.application_activity.application_start"),
            "dicom.application_activity.application_start"
        );
        assert_eq!(roundtrip("payment_processed"), "payment_processed");
        assert_eq!(roundtrip("user login"), "user login");
    }

    #[test]
    fn codes_without_a_name_keep_everything_in_the_generic_form() {
        let ec = EventCoding {
            type_: Coding::new(codes::DICOM, "110100", "Application Activity"),
            subtype: Some(Coding::new(
                "https://profiles.ihe.net/ITI/BALP/CodeSystem/AuthZsubType",
                "AuthZ-Consent",
                "",
            )),
            action: Some(ActionCode::R),
        };
        let a = action_for(&ec, false).unwrap();
        assert_eq!(
            a,
            "fhir|R|http://dicom.nema.org/resources/ontology/DCM|110100|https://profiles.ihe.net/ITI/BALP/CodeSystem/AuthZsubType|AuthZ-Consent"
        );
        assert!(coding_for(&a).same_codes(&ec));
        // A DICOM login whose action code is not the usual one is not "user_authentication".
        let odd = EventCoding { action: Some(ActionCode::R), ..coding_for("user_authentication") };
        assert!(action_for(&odd, false).unwrap().starts_with("fhir|R|"));
        let none = EventCoding { action: None, ..coding_for("patient_data_access") };
        assert_eq!(
            action_for(&none, true).unwrap(),
            format!("fhir||{}|rest|{}|read", codes::AUDIT_EVENT_TYPE, codes::RESTFUL_INTERACTION)
        );
        let long = EventCoding { type_: Coding::new(&"x".repeat(300), "c", ""), subtype: None, action: None };
        assert!(action_for(&long, false).unwrap_err().contains("more than 255"));
    }

    #[test]
    fn guessed_action_codes() {
        for (a, c) in [
            ("payment_processed", ActionCode::E),
            ("record_update", ActionCode::U),
            ("patientRecordDelete", ActionCode::D),
            ("document-view", ActionCode::R),
            ("refund issued", ActionCode::C),
            ("account_transfer", ActionCode::E),
        ] {
            assert_eq!(guess_action_code(a), c, "{a}");
        }
    }

    fn coding() -> impl Strategy<Value = Coding> {
        let s = prop_oneof![
            Just(codes::DICOM.to_string()),
            Just(codes::AUDIT_EVENT_TYPE.to_string()),
            Just(codes::RESTFUL_INTERACTION.to_string()),
            Just(codes::cs::ACTION.to_string()),
            "[a-z:/.|% ]{1,20}",
        ];
        let c = prop_oneof![
            Just("110114".to_string()),
            Just("110122".to_string()),
            Just("rest".to_string()),
            Just("read".to_string()),
            "[a-zA-Z0-9_.|% ]{1,12}",
        ];
        (proptest::option::of(s), proptest::option::of(c)).prop_map(|(system, code)| Coding {
            system,
            code,
            display: None,
        })
    }

    proptest! {
        #[test]
        fn export_after_import_gives_the_same_codes(
            t in coding(),
            s in proptest::option::of(coding()),
            a in proptest::option::of(proptest::sample::select(ActionCode::ALL.to_vec())),
            patient in any::<bool>(),
        ) {
            let ec = EventCoding { type_: t, subtype: s, action: a };
            let name = action_for(&ec, patient).unwrap();
            prop_assert!(valid_action(&name), "{name:?}");
            prop_assert!(coding_for(&name).same_codes(&ec), "{name:?}");
        }

        #[test]
        fn any_action_exports_to_codes_that_import_to_an_action_with_the_same_codes(a in "\\PC{1,40}") {
            let ec = coding_for(&a);
            let back = action_for(&ec, false).unwrap();
            prop_assert!(coding_for(&back).same_codes(&ec));
        }
    }
}
