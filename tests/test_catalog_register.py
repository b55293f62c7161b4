"""The catalog as hub configuration (catalog.toml) and the 2024 municipality register."""

from __future__ import annotations

import json

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from node import catalog, hubdir, register
from node.api.v1 import admin_pb2
from node.app.cli.main import app
from node.hub import Hub
from tests.conftest import PASSPHRASE, make_hub_dir, start_live_hub

RUNNER = CliRunner()

OWN_CATALOG = """
[[dataset]]
name = "school_co2"
fiware_type = "IndoorEnvironmentObserved"
classification = "restricted"
retention_days = 365
description = "CO2 in school rooms"
metrics = [ { name = "co2", unit = "ppm", minimum = 0, maximum = 10000, description = "CO2" } ]
"""


def test_default_catalog_keeps_the_datasets_others_use():
    assert {"air_quality", "traffic", "water_consumption", "electricity"} <= set(catalog.DATASETS)
    assert catalog.dataset("air_quality").metrics["pm25"].unit == "ug/m3"
    assert catalog.dataset("traffic").classification is catalog.Classification.RESTRICTED
    assert all(d.retention_days > 0 and d.fiware_type for d in catalog.DATASETS.values())


@pytest.mark.parametrize(
    ("mutation", "message"),
    [
        (lambda t: t.replace('unit = "ppm"', 'unit = "parts"'), "is not a SenML unit"),
        (lambda t: t.replace("description = \"CO2\" }", "description = \"CO2\" }, { name = \"co2\", unit = \"ppm\" }"), "defined twice"),
        (lambda t: t.replace('"restricted"', '"secret"'), "classification must be one of"),
        (lambda t: t.replace("minimum = 0, maximum = 10000", "minimum = 5, maximum = 1"), "is not below maximum"),
        (lambda t: t.replace("retention_days = 365", "retention_days = 0"), "retention_days"),
        (lambda t: t.replace("retention_days = 365", "retention = 365"), "unknown field 'retention'"),
        (lambda t: t + t, "dataset 'school_co2' is defined twice"),
        (lambda t: t.replace('name = "school_co2"', 'name = "School CO2"'), "must be lowercase"),
        (lambda t: t.replace("metrics = [", "metrics = [ ] #"), "at least one metric"),
        (lambda t: t.replace("[[dataset]]", "[[dataset]"), "not valid TOML"),
    ],
)
def test_a_broken_catalog_is_refused_with_the_reason(mutation, message):
    with pytest.raises(catalog.CatalogError, match=message):
        catalog.parse(mutation(OWN_CATALOG))


def test_a_metric_in_two_datasets_is_refused():
    second = OWN_CATALOG.replace("school_co2", "office_co2")
    with pytest.raises(catalog.CatalogError, match="metric 'co2' is defined twice"):
        catalog.parse(OWN_CATALOG + second)


@given(st.sampled_from(sorted(catalog.SENML_UNITS)), st.floats(-1e9, 1e9), st.floats(1e-3, 1e9))
def test_every_senml_unit_and_range_round_trips(unit, low, width):
    text = OWN_CATALOG.replace('unit = "ppm"', f'unit = "{unit}"').replace(
        "minimum = 0, maximum = 10000", f"minimum = {low!r}, maximum = {low + width!r}")
    metric = catalog.parse(text).dataset("school_co2").metrics["co2"]
    assert (metric.unit, metric.minimum, metric.maximum) == (unit, low, low + width)


def test_catalog_check_cli(tmp_path):
    data_dir = make_hub_dir(tmp_path / "hub", "4001")
    ok = RUNNER.invoke(app, ["catalog", "check", "--data-dir", str(data_dir)])
    assert ok.exit_code == 0 and "default catalog: valid" in ok.output
    (data_dir / "catalog.toml").write_text(OWN_CATALOG.replace('unit = "ppm"', 'unit = "furlong"'))
    bad = RUNNER.invoke(app, ["catalog", "check", "--data-dir", str(data_dir)])
    assert bad.exit_code == 1 and "furlong" in bad.output and "not a SenML unit" in bad.output
    # A hub with a broken catalog does not start.
    with pytest.raises(hubdir.HubDirError, match="catalog is invalid"):
        Hub.open(data_dir, PASSPHRASE.encode())
    written = RUNNER.invoke(app, ["catalog", "default", "--out", str(tmp_path / "copy.toml")])
    assert written.exit_code == 0
    assert catalog.load(tmp_path / "copy.toml").datasets.keys() == catalog.DATASETS.keys()


async def test_a_hub_serves_its_own_catalog(tmp_path):
    data_dir = make_hub_dir(tmp_path / "hub", "3107")
    (data_dir / "catalog.toml").write_text(OWN_CATALOG)
    live = await start_live_hub(data_dir, insecure=True)
    try:
        assert set(live.hub.catalog.datasets) == {"school_co2"}
        sensor = await live.add_sensor(tmp_path, dataset="school_co2", metrics=["co2"])
        assert sensor.credential.units == {"co2": "ppm"}
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{live.hub.endpoint.http_url}/v1/catalog") as response:
                body = await response.json()
        assert body["municipality"] == "3107"
        assert [d["name"] for d in body["datasets"]] == ["school_co2"]
        assert body["datasets"][0]["metrics"][0] == {"name": "co2", "unit": "ppm", "description": "CO2", "minimum": 0.0, "maximum": 10000.0}
    finally:
        await live.stop()


def test_register_is_the_2024_division_with_old_numbers_as_aliases():
    assert len(register.all_municipalities()) == 357
    assert register.lookup("4001").name == "Porsgrunn"
    assert register.lookup("3806") == register.lookup("4001")  # the 2020–2023 number
    assert register.lookup("3004").number == "3107" and register.lookup("3803").number == "3905"
    assert register.is_alias("3806") and not register.is_alias("4001")
    assert register.lookup("1103").number == "1103"  # unchanged numbers are their own
    assert register.lookup("Haram").number == "1580" and register.lookup("Haram").former_number == ""
    assert register.lookup("Oslo").number == "0301"  # name forms: "Oslo - Oslove"
    assert register.lookup("301").number == "0301"
    with pytest.raises(register.UnknownMunicipality):
        register.lookup("9999")


def test_a_hub_created_under_an_old_number_gets_the_current_one(tmp_path):
    config, _ = hubdir.init_hub(tmp_path / "hub", "3806", PASSPHRASE.encode())
    assert config.municipality == "4001"


async def test_a_classification_change_is_refused_while_an_agreement_is_in_force(tmp_path):
    from node.api.v1 import admin_pb2
    from tests.conftest import start_peered
    from tests.test_federation_region import TERMS

    provider, consumer = await start_peered(tmp_path, "4001", "3107")
    data_dir = provider.data_dir
    try:
        view = await provider.admin.ProposeAgreement(
            admin_pb2.ProposeAgreementRequest(terms_toml=TERMS, to=consumer.hub.config.hub_id), metadata=provider.admin_metadata)
        agreement_id = view.terms.agreement_id
        await provider.stop()
        # Reclassifying air_quality (open -> personal) would change what the agreement lets out.
        (data_dir / "catalog.toml").write_text(catalog.default_text().replace(
            'name = "air_quality"\nfiware_type = "AirQualityObserved"\nclassification = "open"',
            'name = "air_quality"\nfiware_type = "AirQualityObserved"\nclassification = "personal"'))
        with pytest.raises(hubdir.HubDirError, match=f"air_quality: open -> personal.*{agreement_id}"):
            await start_live_hub(data_dir)
        # Another dataset's classification may change; undoing the change starts the hub again.
        (data_dir / "catalog.toml").write_text(catalog.default_text().replace('classification = "restricted"\nretention_days = 1825\n'
                                                                              'description = "Vehicle', 'classification = "open"\n'
                                                                              'retention_days = 1825\ndescription = "Vehicle'))
        provider = await start_live_hub(data_dir)
        assert provider.hub.catalog.dataset("traffic").classification is catalog.Classification.OPEN
        await provider.admin.RevokeAgreement(admin_pb2.RevokeAgreementRequest(agreement_id=agreement_id, reason="reclassify"),
                                             metadata=provider.admin_metadata)
        await provider.stop()
        # Once the agreement has ended, the reclassification is accepted.
        (data_dir / "catalog.toml").write_text(catalog.default_text().replace(
            'name = "air_quality"\nfiware_type = "AirQualityObserved"\nclassification = "open"',
            'name = "air_quality"\nfiware_type = "AirQualityObserved"\nclassification = "personal"'))
        provider = await start_live_hub(data_dir)
        assert provider.hub.catalog.dataset("air_quality").classification is catalog.Classification.PERSONAL
    finally:
        await provider.stop()
        await consumer.stop()


async def test_peers_and_partners_discover_what_a_region_offers(tmp_path):
    import asyncio
    import subprocess
    import sys

    from federation import descriptors
    from node.api.v1 import federation_pb2, federation_pb2_grpc
    from tests.conftest import start_peered

    data = [tmp_path / "hub0", tmp_path / "hub1"]
    a, b = await start_peered(tmp_path, "4001", "3905")
    try:
        await b.stop()  # Tønsberg defines its own catalog and restarts; the descriptor carries it
        (data[1] / "catalog.toml").write_text(OWN_CATALOG)
        b = await start_live_hub(data[1])
        await a.admin.AddPeer(admin_pb2.AddPeerRequest(address=b.hub.endpoint.grpc_address, hub_id=b.hub.config.hub_id),
                              metadata=a.admin_metadata)

        async def region() -> dict[str, set[str]]:
            response = await federation_pb2_grpc.FederationStub(a.channel).RegionCatalog(federation_pb2.GetDescriptorRequest())
            found = {}
            for signed in response.descriptors:
                d = descriptors.verify_signature(signed)
                found[d.municipality_number] = {o.name for o in d.datasets}
            return found

        for _ in range(200):
            if (await region()).get("3905") == {"school_co2"}:
                break
            await asyncio.sleep(0.05)
        found = await region()
        assert found["4001"] == set(catalog.DATASETS) and found["3905"] == {"school_co2"}
        # A relayed descriptor altered by the relaying hub no longer verifies.
        response = await federation_pb2_grpc.FederationStub(a.channel).RegionCatalog(federation_pb2.GetDescriptorRequest())
        forged = federation_pb2.SignedDescriptor(descriptor=response.descriptors[1].descriptor.replace(b"school_co2", b"school_co3"),
                                                 signature=response.descriptors[1].signature)
        with pytest.raises(descriptors.DescriptorError, match="not signed"):
            descriptors.verify_signature(forged)
        # The partner CLI lists it.
        env = {"SMARTREGION_PASSPHRASE": PASSPHRASE, "COLUMNS": "200", "PATH": "/usr/bin:/bin"}
        cli = [sys.executable, "-m", "node.app.cli.main", "partner"]
        subprocess.run([*cli, "keygen", "--out", str(tmp_path / "uis.key"), "--name", "UiS"], env=env, check=True, capture_output=True)
        listed = await asyncio.to_thread(subprocess.run, [*cli, "datasets", "--key", str(tmp_path / "uis.key"), "--hub",
                                                          a.hub.endpoint.grpc_address, "--hub-id", a.hub.config.hub_id, "--json"],
                                         env=env, capture_output=True, text=True, timeout=60)
        assert listed.returncode == 0, listed.stderr
        rows = json.loads(listed.stdout)
        assert {"municipality": "3905", "dataset": "school_co2", "classification": "restricted"}.items() <= next(
            r for r in rows if r["dataset"] == "school_co2").items()
        assert {r["dataset"] for r in rows if r["municipality"] == "4001"} == set(catalog.DATASETS)
    finally:
        await a.stop()
        await b.stop()
