"""CapabilityStatement generated from what is registered."""

from __future__ import annotations

from typing import Any

SOFTWARE_VERSION = "0.1.0"


def capability_statement(base_url: str) -> dict[str, Any]:
    """The server's CapabilityStatement with OAuth security and the token URL."""
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-30",
        "kind": "instance",
        "software": {"name": "referral_service", "version": SOFTWARE_VERSION},
        "implementation": {"description": "County referral network FHIR API", "url": f"{base_url}/fhir"},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [
            {
                "mode": "server",
                "security": {
                    "cors": False,
                    "service": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                    "code": "SMART-on-FHIR",
                                }
                            ]
                        }
                    ],
                    "extension": [
                        {
                            "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                            "extension": [{"url": "token", "valueUri": f"{base_url}/oauth/token"}],
                        }
                    ],
                },
                "resource": [],
            }
        ],
    }
