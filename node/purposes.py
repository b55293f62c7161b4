"""Purpose codes: why data is processed (GDPR art. 5(1)(b)); agreements and consents name one."""

from __future__ import annotations

PURPOSES: dict[str, str] = {
    "research": "Research and higher education",
    "public_health": "Public health monitoring and prevention",
    "environmental_monitoring": "Monitoring of the environment and climate",
    "urban_planning": "Land-use, transport and urban planning",
    "emergency_preparedness": "Civil protection and emergency preparedness",
    "service_operations": "Operating and improving municipal services",
    "official_statistics": "Official statistics",
    "commercial_development": "Development of commercial products and services",
}
