"""CapabilityStatement generated from what is really registered (types, interactions, parameters)."""

from __future__ import annotations

from typing import Any

from . import conformance, json_patch
from .resources import RESOURCES

SOFTWARE_VERSION = "0.1.0"

# Operations registered by later use cases: (resource type or "" for system, name, definition).
OPERATIONS: list[tuple[str, str, str]] = [
    ("", "validate", "http://hl7.org/fhir/OperationDefinition/Resource-validate"),
]


# What the CapabilityStatement says of an operation beyond its definition (inputs, permissions).
DOCUMENTATION: dict[tuple[str, str], str] = {}


def register_operation(resource_type: str, name: str, definition: str, documentation: str = "") -> None:
    """Declare an operation so that the CapabilityStatement lists it (with `documentation`, if any)."""
    if (resource_type, name, definition) not in OPERATIONS:
        OPERATIONS.append((resource_type, name, definition))
    if documentation:
        DOCUMENTATION[(resource_type, name)] = documentation


def _resource_entry(type_name: str) -> dict[str, Any]:
    rdef = RESOURCES[type_name]
    entry: dict[str, Any] = {
        "type": type_name,
        "interaction": [{"code": code} for code in rdef.interactions],
        "versioning": "versioned",
        "readHistory": "vread" in rdef.interactions,
        "updateCreate": "update" in rdef.interactions,
        "conditionalCreate": "create" in rdef.interactions,
        "conditionalRead": "not-supported",
        "conditionalUpdate": "update" in rdef.interactions,
        # HAPI's default: a DELETE whose criteria match several resources is 412.
        "conditionalDelete": "single" if "delete" in rdef.interactions else "not-supported",
        "searchInclude": [
            f"{type_name}:{p.name}" for p in rdef.params if p.type == "reference" and not rdef.audit_log
        ],
        "searchRevInclude": [] if rdef.audit_log else sorted(
            f"{other.type}:{p.name}"
            for other in RESOURCES.values()
            for p in other.params
            if p.type == "reference" and (not p.targets or type_name in p.targets) and not other.audit_log
        ),
        "searchParam": [
            {"name": "_id", "type": "token"},
            {"name": "_lastUpdated", "type": "date"},
            *({"name": p.name, "type": p.type} for p in rdef.params),
        ],
    }
    # A type's own definition of an operation replaces the general one of the same name.
    ops = {name: definition for kind, name, definition in OPERATIONS if kind == ""}
    ops.update((name, definition) for kind, name, definition in OPERATIONS if kind == type_name)
    entry["operation"] = [
        {"name": name, "definition": definition}
        | ({"documentation": doc} if (doc := DOCUMENTATION.get((type_name, name))) else {})
        for name, definition in ops.items()
    ]
    return entry


def capability_statement(base_url: str) -> dict[str, Any]:
    """The server's CapabilityStatement with OAuth security and the token URL."""
    server = base_url.rsplit("/fhir", 1)[0]
    resources = [_resource_entry(t) for t in sorted(RESOURCES)]
    resources += [
        {"type": t, "interaction": [{"code": "read"}, {"code": "search-type"}],
         "searchParam": [{"name": n, "type": kind} for n, kind in conformance.SEARCH_PARAMS.items()]}
        for t in conformance.TYPES
    ]
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-30",
        "publisher": "referral_service",
        "kind": "instance",
        "software": {"name": "referral_service", "version": SOFTWARE_VERSION},
        "implementation": {"description": "County referral network FHIR API", "url": base_url},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "patchFormat": [json_patch.MEDIA_TYPE],
        "rest": [
            {
                "mode": "server",
                "security": {
                    "cors": False,
                    "service": [{"coding": [{
                        "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                        "code": "SMART-on-FHIR"}]}],
                    "description": "OAuth2 client credentials; bearer JWT; SMART v2 system scopes",
                    "extension": [{
                        "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                        "extension": [{"url": "token", "valueUri": f"{server}/oauth/token"}],
                    }],
                },
                "resource": resources,
                "interaction": [{"code": "transaction"}, {"code": "batch"}],
                "operation": [{"name": name, "definition": d} for t, name, d in OPERATIONS if t == ""],
            }
        ],
    }


def smart_configuration(base_url: str) -> dict[str, Any]:
    """SMART App Launch 2.0 discovery (`{base}/.well-known/smart-configuration`) for backend services:
    the token endpoint, client credentials with a shared secret (HTTP Basic or form fields), and the
    SMART system scopes a client may ask for, v2 and the v1 spellings still taken. There is no
    authorization endpoint: no user-facing launch is offered."""
    server = base_url.rsplit("/fhir", 1)[0]
    scopes = ["system/*.cruds", "system/*.rs", "system/*.read", "system/*.write"]
    scopes += [f"system/{t}.{p}" for t in sorted(RESOURCES) for p in ("cruds", "rs")]
    return {
        "token_endpoint": f"{server}/oauth/token",
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "scopes_supported": scopes,
        "capabilities": ["client-confidential-symmetric", "permission-v2", "permission-v1"],
    }
