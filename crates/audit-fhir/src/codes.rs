//! Every URI and code this crate writes or reads, in one place, so that docs/fhir.md and the code cannot drift.

// The base as a literal, so that every URL below is spelled from it at compile time.
macro_rules! base {
    () => {
        "https://example.invalid/audit-db/fhir"
    };
}

/// Base of audit-db's own FHIR canonical URLs (extensions and code systems).
///
/// A placeholder under the reserved `.invalid` domain, like the workspace's `repository` URL: FHIR only needs the
/// URL to be stable and unique, not resolvable. Changing it later breaks every consumer that filters on it.
pub const BASE: &str = base!();

/// Extension URLs carried on each exported AuditEvent (resource-level `extension`).
pub mod ext {
    /// The event's exact `action` text (the type/subtype codings alone are many-to-one).
    pub const ACTION: &str = concat!(base!(), "/StructureDefinition/action");
    /// The event's `event_id` (valueString, a UUID), kept even when a FHIR server assigns its own resource id.
    pub const EVENT_ID: &str = concat!(base!(), "/StructureDefinition/event-id");
    /// Position in the organisation's integrity log (valueString of decimal digits: seq is 64-bit, FHIR R4
    /// `integer` is 32-bit).
    pub const SEQ: &str = concat!(base!(), "/StructureDefinition/seq");
    /// RFC 6962 leaf hash of the stored event (valueString, 64 lowercase hex digits, as `audit-db proof` prints).
    pub const LEAF_HASH: &str = concat!(base!(), "/StructureDefinition/leaf-hash");
    /// When audit-db stored the event (valueInstant); covered by the leaf hash.
    pub const INGESTED_AT: &str = concat!(base!(), "/StructureDefinition/ingested-at");
    /// Named retention policy (valueString).
    pub const RETENTION_POLICY: &str = concat!(base!(), "/StructureDefinition/retention-policy");
    /// Producer-stated event schema version (valueString).
    pub const EVENT_VERSION: &str = concat!(base!(), "/StructureDefinition/event-version");
    /// Producer-stated time to live (valueString).
    pub const TTL: &str = concat!(base!(), "/StructureDefinition/ttl");
    /// Producer-measured processing latency (valueDuration in UCUM `ms`).
    pub const PROCESSING_LATENCY: &str = concat!(base!(), "/StructureDefinition/processing-latency");
    /// The exact value of a primitive that FHIR JSON cannot carry as a string (empty, or only whitespace other
    /// than space, tab, CR and LF), as JSON string text in valueString. Placed on the primitive (`_outcomeDesc`,
    /// `_value`, `_site`, `_text`, `_type`, `_valueString`) in place of its value.
    pub const JSON_STRING: &str = concat!(base!(), "/StructureDefinition/json-string");
}

/// audit-db's own code systems.
pub mod cs {
    /// Actions with no standard code: the code is the action text, percent-escaped where FHIR `code` forbids
    /// characters (whitespace, `%`).
    pub const ACTION: &str = concat!(base!(), "/CodeSystem/action");
    /// The exact data classification (PUBLIC, INTERNAL, CONFIDENTIAL, PHI, FINANCIAL) as a security label.
    pub const DATA_CLASSIFICATION: &str = concat!(base!(), "/CodeSystem/data-classification");
}

/// DICOM controlled terminology (event IDs and event type codes used by ATNA and BALP).
pub const DICOM: &str = "http://dicom.nema.org/resources/ontology/DCM";
/// FHIR audit event types (`rest`).
pub const AUDIT_EVENT_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-event-type";
/// FHIR RESTful interactions (BALP subtypes of `rest`).
pub const RESTFUL_INTERACTION: &str = "http://hl7.org/fhir/restful-interaction";
/// HL7 v3 confidentiality codes, the standard security label of a resource's sensitivity.
pub const V3_CONFIDENTIALITY: &str = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality";
/// Kinds of entity (Person, System Object, ...).
pub const AUDIT_ENTITY_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-entity-type";
/// Roles of an entity (Patient, Domain Resource, ...).
pub const OBJECT_ROLE: &str = "http://terminology.hl7.org/CodeSystem/object-role";
/// Kinds of audit source (Application Server, ...).
pub const SECURITY_SOURCE_TYPE: &str = "http://terminology.hl7.org/CodeSystem/security-source-type";
/// BALP's own entity types (XrequestId for the correlation id).
pub const BALP_ENTITY_TYPE: &str = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType";
/// BALP's entity type code for a transport request id.
pub const BALP_XREQUEST_ID: &str = "XrequestId";
/// UCUM, for the latency's unit.
pub const UCUM: &str = "http://unitsofmeasure.org";

/// Media type of a FHIR JSON resource or Bundle (`Accept`/`Content-Type`).
pub const FHIR_JSON: &str = "application/fhir+json";
/// Media type of FHIR bulk NDJSON (one resource per line).
pub const FHIR_NDJSON: &str = "application/fhir+ndjson";

/// One DICOM code with its display and the snake_case name used in `dicom.*` action names.
#[derive(Debug, Clone, Copy)]
pub struct DicomCode {
    /// The DCM code.
    pub code: &'static str,
    /// DICOM PS3.16 display text.
    pub display: &'static str,
    /// Name used in action text.
    pub name: &'static str,
}

const fn d(code: &'static str, display: &'static str, name: &'static str) -> DicomCode {
    DicomCode { code, display, name }
}

/// DICOM audit event IDs (CID 400, the R4 `audit-event-type` value set's DCM part).
pub const DICOM_EVENT_IDS: &[DicomCode] = &[
    d("110100", "Application Activity", "application_activity"),
    d("110101", "Audit Log Used", "audit_log_used"),
    d("110102", "Begin Transferring DICOM Instances", "begin_transferring_dicom_instances"),
    d("110103", "DICOM Instances Accessed", "dicom_instances_accessed"),
    d("110104", "DICOM Instances Transferred", "dicom_instances_transferred"),
    d("110105", "DICOM Study Deleted", "dicom_study_deleted"),
    d("110106", "Export", "export"),
    d("110107", "Import", "import"),
    d("110108", "Network Entry", "network_entry"),
    d("110109", "Order Record", "order_record"),
    d("110110", "Patient Record", "patient_record"),
    d("110111", "Procedure Record", "procedure_record"),
    d("110112", "Query", "query"),
    d("110113", "Security Alert", "security_alert"),
    d("110114", "User Authentication", "user_authentication"),
];

/// DICOM audit event type codes (CID 401, the R4 `audit-event-sub-type` value set's DCM part).
pub const DICOM_EVENT_TYPES: &[DicomCode] = &[
    d("110120", "Application Start", "application_start"),
    d("110121", "Application Stop", "application_stop"),
    d("110122", "Login", "login"),
    d("110123", "Logout", "logout"),
    d("110124", "Attach", "attach"),
    d("110125", "Detach", "detach"),
    d("110126", "Node Authentication", "node_authentication"),
    d("110127", "Emergency Override Started", "emergency_override_started"),
    d("110128", "Network Configuration", "network_configuration"),
    d("110129", "Security Configuration", "security_configuration"),
    d("110130", "Hardware Configuration", "hardware_configuration"),
    d("110131", "Software Configuration", "software_configuration"),
    d("110132", "Use of Restricted Function", "use_of_restricted_function"),
    d("110133", "Audit Recording Stopped", "audit_recording_stopped"),
    d("110134", "Audit Recording Started", "audit_recording_started"),
    d("110135", "Object Security Attributes Changed", "object_security_attributes_changed"),
    d("110136", "Security Roles Changed", "security_roles_changed"),
    d("110137", "User security Attributes Changed", "user_security_attributes_changed"),
    d("110138", "Emergency Override Stopped", "emergency_override_stopped"),
    d("110139", "Remote Service Operation Started", "remote_service_operation_started"),
    d("110140", "Remote Service Operation Stopped", "remote_service_operation_stopped"),
    d("110141", "Local Service Operation Started", "local_service_operation_started"),
    d("110142", "Local Service Operation Stopped", "local_service_operation_stopped"),
];

/// DICOM "Source Role ID": the agent that is the audit source itself.
pub const DICOM_SOURCE_ROLE_ID: DicomCode = d("110153", "Source Role ID", "source_role_id");

/// The R4 `restful-interaction` codes (BALP uses them as subtypes of `rest`).
pub const RESTFUL_INTERACTIONS: &[&str] = &[
    "read",
    "vread",
    "update",
    "patch",
    "delete",
    "history",
    "history-instance",
    "history-type",
    "history-system",
    "create",
    "search",
    "search-type",
    "search-system",
    "capabilities",
    "transaction",
    "batch",
    "operation",
];

/// The concrete resource types of FHIR R4 (4.0.1 `resource-types`, without the abstract Resource and
/// DomainResource): a target of one of these types with a FHIR id is exported as a literal reference.
pub const FHIR_R4_RESOURCE_TYPES: &[&str] = &[
    "Account",
    "ActivityDefinition",
    "AdverseEvent",
    "AllergyIntolerance",
    "Appointment",
    "AppointmentResponse",
    "AuditEvent",
    "Basic",
    "Binary",
    "BiologicallyDerivedProduct",
    "BodyStructure",
    "Bundle",
    "CapabilityStatement",
    "CarePlan",
    "CareTeam",
    "CatalogEntry",
    "ChargeItem",
    "ChargeItemDefinition",
    "Claim",
    "ClaimResponse",
    "ClinicalImpression",
    "CodeSystem",
    "Communication",
    "CommunicationRequest",
    "CompartmentDefinition",
    "Composition",
    "ConceptMap",
    "Condition",
    "Consent",
    "Contract",
    "Coverage",
    "CoverageEligibilityRequest",
    "CoverageEligibilityResponse",
    "DetectedIssue",
    "Device",
    "DeviceDefinition",
    "DeviceMetric",
    "DeviceRequest",
    "DeviceUseStatement",
    "DiagnosticReport",
    "DocumentManifest",
    "DocumentReference",
    "EffectEvidenceSynthesis",
    "Encounter",
    "Endpoint",
    "EnrollmentRequest",
    "EnrollmentResponse",
    "EpisodeOfCare",
    "EventDefinition",
    "Evidence",
    "EvidenceVariable",
    "ExampleScenario",
    "ExplanationOfBenefit",
    "FamilyMemberHistory",
    "Flag",
    "Goal",
    "GraphDefinition",
    "Group",
    "GuidanceResponse",
    "HealthcareService",
    "ImagingStudy",
    "Immunization",
    "ImmunizationEvaluation",
    "ImmunizationRecommendation",
    "ImplementationGuide",
    "InsurancePlan",
    "Invoice",
    "Library",
    "Linkage",
    "List",
    "Location",
    "Measure",
    "MeasureReport",
    "Media",
    "Medication",
    "MedicationAdministration",
    "MedicationDispense",
    "MedicationKnowledge",
    "MedicationRequest",
    "MedicationStatement",
    "MedicinalProduct",
    "MedicinalProductAuthorization",
    "MedicinalProductContraindication",
    "MedicinalProductIndication",
    "MedicinalProductIngredient",
    "MedicinalProductInteraction",
    "MedicinalProductManufactured",
    "MedicinalProductPackaged",
    "MedicinalProductPharmaceutical",
    "MedicinalProductUndesirableEffect",
    "MessageDefinition",
    "MessageHeader",
    "MolecularSequence",
    "NamingSystem",
    "NutritionOrder",
    "Observation",
    "ObservationDefinition",
    "OperationDefinition",
    "OperationOutcome",
    "Organization",
    "OrganizationAffiliation",
    "Parameters",
    "Patient",
    "PaymentNotice",
    "PaymentReconciliation",
    "Person",
    "PlanDefinition",
    "Practitioner",
    "PractitionerRole",
    "Procedure",
    "Provenance",
    "Questionnaire",
    "QuestionnaireResponse",
    "RelatedPerson",
    "RequestGroup",
    "ResearchDefinition",
    "ResearchElementDefinition",
    "ResearchStudy",
    "ResearchSubject",
    "RiskAssessment",
    "RiskEvidenceSynthesis",
    "Schedule",
    "SearchParameter",
    "ServiceRequest",
    "Slot",
    "Specimen",
    "SpecimenDefinition",
    "StructureDefinition",
    "StructureMap",
    "Subscription",
    "Substance",
    "SubstanceNucleicAcid",
    "SubstancePolymer",
    "SubstanceProtein",
    "SubstanceReferenceInformation",
    "SubstanceSourceMaterial",
    "SubstanceSpecification",
    "SupplyDelivery",
    "SupplyRequest",
    "Task",
    "TerminologyCapabilities",
    "TestReport",
    "TestScript",
    "ValueSet",
    "VerificationResult",
    "VisionPrescription",
];
