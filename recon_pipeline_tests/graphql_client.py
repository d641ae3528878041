"""Talking to a running `dagster dev` for the end-to-end test: Dagster's own
`DagsterGraphQLClient` where it has the call (launch a run, read its status), raw GraphQL
for what it has no method for (the workspace's load status, materializations, check
executions, partition backfills, the run list, a run's errors)."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from typing import Any, TypeVar

from dagster_graphql import DagsterGraphQLClient

T = TypeVar("T")
TERMINAL = ("SUCCESS", "FAILURE", "CANCELED")

WORKSPACE = """{ workspaceOrError { ... on Workspace { locationEntries {
  name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }"""
MATERIALIZATIONS = """query Mats($key: AssetKeyInput!) { assetOrError(assetKey: $key) {
  ... on Asset { assetMaterializations(limit: 50) { runId partition metadataEntries {
    __typename label ... on IntMetadataEntry { intValue } ... on FloatMetadataEntry { floatValue }
    ... on TextMetadataEntry { text } ... on BoolMetadataEntry { boolValue }
    ... on MarkdownMetadataEntry { mdStr }
    ... on TableMetadataEntry { table { records } } } } } } }"""
CHECK = """query Check($key: AssetKeyInput!, $name: String!) {
  assetCheckExecutions(assetKey: $key, checkName: $name, limit: 20) {
    runId status evaluation { success severity } } }"""
CHECK_DESCRIPTIONS = """query CheckDescriptions($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) { ... on AssetNode { assetChecksOrError {
    ... on AssetChecks { checks { name description } } } } } }"""
BACKFILL = """mutation Backfill($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) { __typename
    ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } } }"""
BACKFILL_STATUS = """query BF($id: String!) { partitionBackfillOrError(backfillId: $id) {
  ... on PartitionBackfill { status numPartitions runs(limit: 50) { runId status
    tags { key value } } } } }"""
RUNS = """query Runs($filter: RunsFilter) { runsOrError(filter: $filter, limit: 200) {
  ... on Runs { results { runId jobName status startTime endTime } } } }"""


class GraphQL:
    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/graphql"
        self.client = DagsterGraphQLClient("127.0.0.1", port_number=port, timeout=30)

    def __call__(self, query: str, variables: dict[str, Any] | None = None) -> Any:
        request = urllib.request.Request(
            self.url, data=json.dumps({"query": query, "variables": variables or {}}).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            body = json.load(response)
        if body.get("errors"):
            raise RuntimeError(body["errors"])
        return body["data"]

    def loaded(self) -> bool:
        try:
            entries = self(WORKSPACE)["workspaceOrError"]["locationEntries"]
        except OSError:
            return False  # not listening yet
        return bool(entries) and all(e["loadStatus"] == "LOADED" for e in entries)

    def launch(self, job_name: str, partition: str, run_config: dict[str, Any]) -> str:
        return self.client.submit_job_execution(
            job_name, run_config=run_config, tags={"dagster/partition": partition})

    def run_status(self, run_id: str) -> str:
        return self.client.get_run_status(run_id).value


def wait_for(what: str, probe: Callable[[], T | None], deadline_s: float,
             interval_s: float = 0.5) -> T:
    """Poll `probe` until it returns a value; fail after the deadline."""
    deadline = time.monotonic() + deadline_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {deadline_s:g} s waiting for {what}")
        time.sleep(interval_s)


RUN_ERRORS = """query Errors($id: ID!) { logsForRun(runId: $id) {
  ... on EventConnection { events { __typename ... on MessageEvent { message }
    ... on ExecutionStepFailureEvent { error { message } }
    ... on EngineEvent { error { message } } ... on RunFailureEvent { error { message } } } } } }"""


def run_errors(gql: GraphQL, run_id: str) -> list[str]:
    """The failure messages of a run, to explain a failed assertion."""
    events = gql(RUN_ERRORS, {"id": run_id})["logsForRun"]["events"]
    return [e["error"]["message"] for e in events if e.get("error")] or [
        e.get("message", "") for e in events[-5:]]


def run_messages(gql: GraphQL, run_id: str) -> list[str]:
    """The messages of a run's events, in order."""
    events = gql(RUN_ERRORS, {"id": run_id})["logsForRun"]["events"]
    return [e["message"] for e in events if e.get("message")]
