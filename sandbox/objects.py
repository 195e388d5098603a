"""The sandbox org's data model: which sObjects exist, their fields and Salesforce types.

Everything else in the sandbox (describe, SOQL, the org tables, Bulk CSV, the Connect mirror) is
derived from these definitions, so adding a field here adds it everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Salesforce field type -> Postgres column type in the org database.
PG_TYPES = {
    "id": "char(18)",
    "reference": "char(18)",
    "string": "text",
    "email": "text",
    "phone": "text",
    "url": "text",
    "picklist": "text",
    "textarea": "text",
    "date": "date",
    "datetime": "timestamptz",
    "boolean": "boolean",
    "double": "double precision",
    "currency": "numeric(18,2)",
    "percent": "numeric(18,2)",
    "int": "integer",
}

# SOAP types reported by describe, which some clients read.
SOAP_TYPES = {
    "id": "tns:ID",
    "reference": "tns:ID",
    "date": "xsd:date",
    "datetime": "xsd:dateTime",
    "boolean": "xsd:boolean",
    "double": "xsd:double",
    "currency": "xsd:double",
    "percent": "xsd:double",
    "int": "xsd:int",
}

# Fields the platform maintains on every object; clients cannot write them.
SYSTEM_FIELDS = ("Id", "IsDeleted", "CreatedDate", "LastModifiedDate", "SystemModstamp")


@dataclass(frozen=True)
class Field:
    name: str
    type: str
    label: str = ""
    length: int = 0
    nillable: bool = True
    updateable: bool = True
    createable: bool = True
    picklist: tuple[str, ...] = ()
    reference_to: tuple[str, ...] = ()
    relationship_name: str | None = None
    auto_number: bool = False

    @property
    def long_text(self) -> bool:
        """A Long Text Area: "can be any field except a long text area field" in a WHERE clause (SOQL and SOSL
        Reference, "Condition Expression Syntax"), and not sortable or groupable."""
        return self.type == "textarea" and self.length > 255

    @property
    def column(self) -> str:
        return self.name.lower()

    @property
    def pg_type(self) -> str:
        return PG_TYPES[self.type]

    @property
    def max_length(self) -> int:
        """Describe's ``length``: the most characters a text value may have (0 for non-text types)."""
        if self.type in ("id", "reference"):
            return 18
        return self.length or (255 if self.type in ("string", "email", "phone", "url", "picklist") else 0)

    def describe(self) -> dict:
        length = self.max_length
        return {
            "name": self.name,
            "label": self.label or _label(self.name),
            "type": self.type,
            "soapType": SOAP_TYPES.get(self.type, "xsd:string"),
            "length": length,
            "byteLength": length * 3,
            "precision": 18 if self.type in ("currency", "percent") else 0,
            "scale": 2 if self.type in ("currency", "percent") else 0,
            "digits": 9 if self.type == "int" else 0,
            "nillable": self.nillable,
            "createable": self.createable,
            "updateable": self.updateable,
            "filterable": not self.long_text,
            "sortable": self.type != "textarea",
            "groupable": self.type not in ("textarea", "double", "currency", "percent", "datetime"),
            "unique": False,
            "externalId": False,
            "idLookup": self.name == "Id" or self.auto_number,
            "custom": self.name.endswith("__c"),
            "calculated": False,
            "autoNumber": self.auto_number,
            "defaultedOnCreate": self.name in SYSTEM_FIELDS or self.type == "boolean" or self.auto_number,
            "restrictedPicklist": False,
            "picklistValues": [
                {"active": True, "defaultValue": False, "label": v, "validFor": None, "value": v}
                for v in self.picklist
            ],
            "referenceTo": list(self.reference_to),
            "relationshipName": self.relationship_name,
        }


@dataclass(frozen=True)
class SObject:
    name: str
    key_prefix: str
    label_plural: str
    fields: tuple[Field, ...]
    name_field: str = "Name"
    by_lower: dict[str, Field] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        self.by_lower.update({f.name.lower(): f for f in self.fields})

    @property
    def table(self) -> str:
        return self.name.lower()

    def field(self, name: str) -> Field | None:
        """Field by API name, case-insensitively, as Salesforce resolves names."""
        return self.by_lower.get(name.lower())

    def describe(self, api_version: str) -> dict:
        base = f"/services/data/v{api_version}/sobjects/{self.name}"
        return {
            **self.summary(api_version),
            "fields": [f.describe() for f in self.fields],
            "childRelationships": [r.describe() for r in CHILD_RELATIONSHIPS if r.parent == self.name],
            "recordTypeInfos": [],
            "urls": {**self.summary(api_version)["urls"], "describe": f"{base}/describe"},
        }

    def summary(self, api_version: str) -> dict:
        base = f"/services/data/v{api_version}/sobjects/{self.name}"
        return {
            "name": self.name,
            "label": _label(self.name),
            "labelPlural": self.label_plural,
            "keyPrefix": self.key_prefix,
            "custom": False,
            "queryable": True,
            "retrieveable": True,
            "searchable": True,
            "createable": True,
            "updateable": True,
            "deletable": True,
            "undeletable": True,
            "replicateable": True,
            "layoutable": True,
            "urls": {"sobject": base, "rowTemplate": base + "/{ID}"},
        }


def _label(name: str) -> str:
    out = ""
    for i, ch in enumerate(name):
        if i and ch.isupper() and not name[i - 1].isupper():
            out += " "
        out += ch
    return out


def _system(key: str) -> tuple[Field, ...]:
    return (
        Field("Id", "id", nillable=False, updateable=False, createable=False),
        Field("IsDeleted", "boolean", nillable=False, updateable=False, createable=False),
        Field("CreatedDate", "datetime", nillable=False, updateable=False, createable=False),
        Field("LastModifiedDate", "datetime", nillable=False, updateable=False, createable=False),
        Field("SystemModstamp", "datetime", nillable=False, updateable=False, createable=False),
        Field("OwnerId", "reference", nillable=False, reference_to=("User",), relationship_name="Owner"),
    )


LEAD_SOURCES = ("Web", "Phone Inquiry", "Partner Referral", "Purchased List", "Other")
INDUSTRIES = ("Agriculture", "Banking", "Education", "Energy", "Healthcare", "Media", "Retail", "Technology")

ACCOUNT = SObject(
    "Account",
    "001",
    "Accounts",
    _system("001")
    + (
        Field("Name", "string", nillable=False),
        Field("Type", "picklist", picklist=("Prospect", "Customer - Direct", "Customer - Channel", "Partner", "Other")),
        Field("Industry", "picklist", picklist=INDUSTRIES),
        Field("Phone", "phone", length=40),
        Field("Website", "url"),
        Field("BillingStreet", "textarea"),
        Field("BillingCity", "string", length=40),
        Field("BillingPostalCode", "string", length=20),
        Field("BillingCountry", "string", length=80),
        Field("AnnualRevenue", "currency"),
        Field("NumberOfEmployees", "int"),
        Field("Description", "textarea", length=32000),
    ),
)

CONTACT = SObject(
    "Contact",
    "003",
    "Contacts",
    _system("003")
    + (
        Field("AccountId", "reference", reference_to=("Account",), relationship_name="Account"),
        Field("Salutation", "picklist", picklist=("Mr.", "Ms.", "Mrs.", "Dr.", "Prof.")),
        Field("FirstName", "string", length=40),
        Field("LastName", "string", length=80, nillable=False),
        Field("Name", "string", length=121, updateable=False, createable=False),
        Field("Title", "string", length=128),
        Field("Email", "email", length=80),
        Field("Phone", "phone", length=40),
        Field("MobilePhone", "phone", length=40),
        Field("Birthdate", "date"),
        Field("MailingStreet", "textarea"),
        Field("MailingCity", "string", length=40),
        Field("MailingPostalCode", "string", length=20),
        Field("MailingCountry", "string", length=80),
        Field("LeadSource", "picklist", picklist=LEAD_SOURCES),
        Field("HasOptedOutOfEmail", "boolean", nillable=False),
        Field("LastActivityDate", "date", updateable=False, createable=False),
        Field("Description", "textarea", length=32000),
    ),
)

LEAD = SObject(
    "Lead",
    "00Q",
    "Leads",
    _system("00Q")
    + (
        Field("FirstName", "string", length=40),
        Field("LastName", "string", length=80, nillable=False),
        Field("Name", "string", length=121, updateable=False, createable=False),
        Field("Company", "string", nillable=False),
        Field("Title", "string", length=128),
        Field("Email", "email", length=80),
        Field("Phone", "phone", length=40),
        Field(
            "Status",
            "picklist",
            picklist=("Open - Not Contacted", "Working - Contacted", "Closed - Converted", "Closed - Not Converted"),
        ),
        Field("LeadSource", "picklist", picklist=LEAD_SOURCES),
        Field("Industry", "picklist", picklist=INDUSTRIES),
        Field("City", "string", length=40),
        Field("Country", "string", length=80),
        Field("AnnualRevenue", "currency"),
        # "After a lead has been converted, it's read only": the conversion fields can be set when a lead is
        # created (an import of converted leads) but never updated (Object Reference: Lead).
        Field("IsConverted", "boolean", nillable=False, updateable=False),
        Field("ConvertedAccountId", "reference", updateable=False, reference_to=("Account",),
              relationship_name="ConvertedAccount"),
        Field("ConvertedContactId", "reference", updateable=False, reference_to=("Contact",),
              relationship_name="ConvertedContact"),
        Field("ConvertedOpportunityId", "reference", updateable=False, reference_to=("Opportunity",),
              relationship_name="ConvertedOpportunity"),
        Field("ConvertedDate", "date", updateable=False),
        Field("Description", "textarea", length=32000),
    ),
)

# Opportunity (Object Reference: Opportunity). Name, StageName and CloseDate are required; IsClosed and IsWon
# are "directly controlled by StageName" and cannot be set. The stage values are each org's own (the docs say
# to query OpportunityStage); these are the ones a new org starts with.
STAGES = ("Prospecting", "Qualification", "Needs Analysis", "Value Proposition", "Id. Decision Makers",
          "Perception Analysis", "Proposal/Price Quote", "Negotiation/Review", "Closed Won", "Closed Lost")
OPPORTUNITY = SObject(
    "Opportunity",
    "006",
    "Opportunities",
    _system("006")
    + (
        Field("AccountId", "reference", reference_to=("Account",), relationship_name="Account"),
        Field("Name", "string", length=120, nillable=False),
        Field("StageName", "picklist", nillable=False, picklist=STAGES),
        Field("CloseDate", "date", nillable=False),
        Field("Amount", "currency"),
        Field("Probability", "percent"),
        Field("Type", "picklist", picklist=("Existing Customer - Upgrade", "Existing Customer - Replacement",
                                            "Existing Customer - Downgrade", "New Customer")),
        Field("LeadSource", "picklist", picklist=LEAD_SOURCES),
        Field("IsClosed", "boolean", nillable=False, updateable=False, createable=False),
        Field("IsWon", "boolean", nillable=False, updateable=False, createable=False),
        Field("Description", "textarea", length=32000),
    ),
)

CASE = SObject(
    "Case",
    "500",
    "Cases",
    _system("500")
    + (
        # "Autonumber, Defaulted on create ... idLookup": the platform numbers every case (Object Reference: Case).
        Field("CaseNumber", "string", length=30, nillable=False, updateable=False, createable=False,
              auto_number=True),
        Field("AccountId", "reference", reference_to=("Account",), relationship_name="Account"),
        Field("ContactId", "reference", reference_to=("Contact",), relationship_name="Contact"),
        Field("Subject", "string"),
        Field("Description", "textarea", length=32000),
        Field("Status", "picklist", picklist=("New", "Working", "Escalated", "Closed")),
        Field("Priority", "picklist", picklist=("High", "Medium", "Low")),
        Field("Origin", "picklist", picklist=("Phone", "Email", "Web")),
        Field("SuppliedName", "string", length=80),
        Field("SuppliedEmail", "email", length=80),
        Field("SuppliedPhone", "phone", length=40),
        # Set by the platform from Status (Object Reference: Case: IsClosed "Defaulted on create, Filter, Group,
        # Sort"; ClosedDate "Filter, Nillable, Sort"): neither can be written through the API.
        Field("IsClosed", "boolean", nillable=False, updateable=False, createable=False),
        Field("ClosedDate", "datetime", updateable=False, createable=False),
    ),
    name_field="CaseNumber",
)

# PrivacyHoldReason and PrivacyHold as the Object Reference documents them (API 59.0 and later, "for users with
# the Privacy Center license and the Manage Privacy Hold user permission"):
# https://developer.salesforce.com/docs/atlas.en-us.object_reference.meta/object_reference/sforce_api_objects_privacyhold.htm
# https://developer.salesforce.com/docs/atlas.en-us.object_reference.meta/object_reference/sforce_api_objects_privacyholdreason.htm
PRIVACY_OBJECTS_SINCE = "59.0"

PRIVACY_HOLD_REASON = SObject(
    "PrivacyHoldReason",
    "0Hr",
    "Privacy Hold Reasons",
    _system("0Hr")
    + (
        Field("Name", "string", nillable=False),
        Field("Detail", "string"),  # "the business or legal purpose" of the hold
        Field("LastViewedDate", "datetime", updateable=False, createable=False),
        Field("LastReferencedDate", "datetime", updateable=False, createable=False),
    ),
)

# What ReferenceRecordId may point at ("Refers To Account, Contact, Individual, Lead, User"): a Case cannot be
# held. Individual and User are not modelled here; their key prefixes still name the type.
HELD_TYPES = {"001": "Account", "003": "Contact", "0PK": "Individual", "00Q": "Lead", "005": "User"}

PRIVACY_HOLD = SObject(
    "PrivacyHold",
    "0Hp",
    "Privacy Holds",
    _system("0Hp")
    + (
        Field("Name", "string", nillable=False),
        Field("ReferenceRecordId", "reference", nillable=False, reference_to=tuple(HELD_TYPES.values()),
              relationship_name="ReferenceRecord"),
        # Set by the platform from ReferenceRecordId: a restricted picklist clients cannot write.
        Field("ReferenceRecordType", "picklist", updateable=False, createable=False,
              picklist=tuple(HELD_TYPES.values())),
        Field("PrivacyHoldReasonId", "reference", nillable=False, reference_to=("PrivacyHoldReason",),
              relationship_name="PrivacyHoldReason"),
        Field("IsActive", "boolean", nillable=False),  # "The default value is false."
        Field("EndDate", "date"),
        Field("RegisteredDate", "date"),
        Field("LastViewedDate", "datetime", updateable=False, createable=False),
        Field("LastReferencedDate", "datetime", updateable=False, createable=False),
    ),
)

OBJECTS: dict[str, SObject] = {
    o.name.lower(): o for o in (ACCOUNT, CONTACT, LEAD, OPPORTUNITY, CASE, PRIVACY_HOLD_REASON, PRIVACY_HOLD)
}
BY_PREFIX: dict[str, SObject] = {o.key_prefix: o for o in OBJECTS.values()}
# Key prefix -> object name for every type a lookup may name, modelled here or not (User, Group, Individual).
REFERENCE_PREFIXES = {"005": "User", "00G": "Group", **HELD_TYPES, **{p: o.name for p, o in BY_PREFIX.items()}}

# Fields the org derives from others when a record is written.
DERIVED = {
    "contact": {"name": ("firstname", "lastname")},
    "lead": {"name": ("firstname", "lastname")},
}
# Fields the org computes from others, as SQL over the row (stored generated columns).
COMPUTED = {
    "opportunity": {
        "isclosed": "coalesce(stagename IN ('Closed Won', 'Closed Lost'), false)",
        "iswon": "coalesce(stagename = 'Closed Won', false)",
    },
    "privacyhold": {
        "referencerecordtype": "CASE left(referencerecordid, 3) "
        + " ".join(f"WHEN '{prefix}' THEN '{name}'" for prefix, name in HELD_TYPES.items()) + " END",
    },
}


@dataclass(frozen=True)
class ChildRelationship:
    """One entry of a parent's describe ``childRelationships``: a child object's lookup to the parent and what
    deleting the parent does to it. ``cascadeDelete``: "whether the child object is deleted when the parent
    object is deleted"; ``restrictedDelete``: "whether the parent object can't be deleted because it is
    referenced by a child object" (SOAP API Developer Guide, DescribeSObjectResult, ChildRelationship)."""

    parent: str
    child: str
    field: str
    name: str
    cascade_delete: bool = False
    restricted_delete: bool = False

    def describe(self) -> dict:
        return {
            "cascadeDelete": self.cascade_delete,
            "childSObject": self.child,
            "deprecatedAndHidden": False,
            "field": self.field,
            "junctionIdListNames": [],
            "junctionReferenceTo": [],
            "relationshipName": self.name,
            "restrictedDelete": self.restricted_delete,
        }


# Deleting an Account moves its Contacts and Opportunities to the Recycle Bin with it, and "you can't delete an
# account" when "a case is related to the account" (Salesforce Help: Guidelines for Deleting Accounts). The
# describe values themselves are not documented; these say what the Help page says. A contact with cases: the
# documentation we have is silent, and the sandbox takes the stricter reading (the cases keep it).
CHILD_RELATIONSHIPS = (
    ChildRelationship("Account", "Contact", "AccountId", "Contacts", cascade_delete=True),
    ChildRelationship("Account", "Opportunity", "AccountId", "Opportunities", cascade_delete=True),
    ChildRelationship("Account", "Case", "AccountId", "Cases", restricted_delete=True),
    ChildRelationship("Contact", "Case", "ContactId", "Cases", restricted_delete=True),
)


def get_object(name: str) -> SObject | None:
    """sObject by API name, case-insensitively."""
    return OBJECTS.get(name.lower())


# Objects only some users of some orgs have: PrivacyHold and PrivacyHoldReason are "available in API version
# 59.0 and later" and "for users with the Privacy Center license and the Manage Privacy Hold user permission".
_PRIVACY_OBJECTS = frozenset({"privacyhold", "privacyholdreason"})


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".") if p.isdigit())


def visible_object(name: str, *, api_version: str, privacy_center: bool) -> SObject | None:
    """The sObject as a user sees it: None when it does not exist for that user and API version, which the
    API reports exactly as for a type that does not exist at all."""
    obj = get_object(name)
    if obj is not None and obj.table in _PRIVACY_OBJECTS and (
            not privacy_center or _version(api_version) < _version(PRIVACY_OBJECTS_SINCE)):
        return None
    return obj
