from recon_pipeline.definitions import defs
from recon_pipeline.resources import MongoResource, PostgresResource


def test_definitions_load_with_both_resources() -> None:
    resources = defs.resources or {}
    assert isinstance(resources["postgres"], PostgresResource)
    assert isinstance(resources["mongo"], MongoResource)
