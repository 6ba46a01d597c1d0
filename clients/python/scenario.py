"""An integrator's scenario against a running Sales Milestones suite, through
a Python client generated from proto/ with grpcio-tools.

Run by .ci/clients.sh, which generates the client into a folder on
PYTHONPATH, starts the server and mints an admin token. Environment:

  MILESTONES_ENDPOINT  host:port of the suite (plaintext)
  MILESTONES_TOKEN     a bearer token with the admin role for a fresh tenant

It builds a team tree (Sales > EMEA) with three reps, a metric and
milestones, records activities, checks the progress numbers and the
leaderboard order against what it recorded, watches a recognition arrive on
the feed, checks request_id idempotency, and checks the BadRequest details
of bad input. Any mismatch raises, so the process exits non-zero.
"""

import datetime as dt
import os
import queue
import sys
import threading
import time
import uuid
import zoneinfo

import grpc
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2
from google.type import date_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from milestones.goal.v1 import goal_service_pb2 as goal
from milestones.goal.v1 import goal_service_pb2_grpc as goal_grpc
from milestones.goal.v1 import metric_pb2, milestone_pb2, org_pb2
from milestones.progress.v1 import progress_service_pb2 as progress
from milestones.progress.v1 import progress_service_pb2_grpc as progress_grpc
from milestones.progress.v1 import reporting_pb2
from milestones.recognition.v1 import badge_pb2, rule_pb2, visibility_pb2
from milestones.recognition.v1 import recognition_service_pb2 as recognition
from milestones.recognition.v1 import recognition_service_pb2_grpc as recognition_grpc

ENDPOINT = os.environ["MILESTONES_ENDPOINT"]
TOKEN = os.environ["MILESTONES_TOKEN"]
# Every call carries the bearer token; the tenant comes from the token.
AUTH = (("authorization", f"Bearer {TOKEN}"),)


def step(msg):
    print(f"-- {msg}", flush=True)


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


def check_eq(got, want, what):
    check(got == want, f"{what}: expected {want!r}, got {got!r}")


def retry_not_found(call, what, timeout=20.0):
    """Calls `call()` until it stops failing with NOT_FOUND: progress and
    recognition learn about what goal created from its change feed, a moment
    later."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.NOT_FOUND or time.monotonic() > deadline:
                raise AssertionError(f"{what}: {e.code()} {e.details()}") from e
            time.sleep(0.1)


def details(err):
    """The google.rpc.Status details of a failed call: (ErrorInfo,
    BadRequest or None). The server sends them in the
    `grpc-status-details-bin` trailer; grpcio-status decodes it."""
    status = rpc_status.from_call(err)
    check(status is not None, f"no status details on {err.code()} {err.details()}")
    info, bad = None, None
    for any_detail in status.details:
        if any_detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            any_detail.Unpack(info)
        elif any_detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            any_detail.Unpack(bad)
    check(info is not None, "every error carries an ErrorInfo")
    return info, bad


def expect_error(call, code):
    try:
        result = call()
    except grpc.RpcError as e:
        check_eq(e.code(), code, "status code")
        return e
    raise AssertionError(f"expected {code}, got a result: {result}")


def wire_date(d):
    return date_pb2.Date(year=d.year, month=d.month, day=d.day)


def main():
    channel = grpc.insecure_channel(ENDPOINT)
    grpc.channel_ready_future(channel).result(timeout=10)

    step("health")
    health = health_pb2_grpc.HealthStub(channel)
    for service in (
        "milestones.goal.v1.GoalService",
        "milestones.progress.v1.ProgressService",
        "milestones.recognition.v1.RecognitionService",
    ):
        r = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        check_eq(r.status, health_pb2.HealthCheckResponse.SERVING, f"health of {service}")

    goals = goal_grpc.GoalServiceStub(channel)
    prog = progress_grpc.ProgressServiceStub(channel)
    reco = recognition_grpc.RecognitionServiceStub(channel)

    # Periods are civil dates in the tenant's time zone.
    settings = goals.GetTenantSettings(goal.GetTenantSettingsRequest(), metadata=AUTH)
    today = dt.datetime.now(zoneinfo.ZoneInfo(settings.time_zone or "UTC")).date()
    start, end = today - dt.timedelta(days=5), today + dt.timedelta(days=20)

    step("team tree: Sales > EMEA")
    sales = goals.CreateTeam(
        goal.CreateTeamRequest(team=org_pb2.Team(display_name="Sales"), request_id=str(uuid.uuid4())),
        metadata=AUTH,
    )
    emea = goals.CreateTeam(
        goal.CreateTeamRequest(
            team=org_pb2.Team(display_name="EMEA", parent=sales.name), request_id=str(uuid.uuid4())
        ),
        metadata=AUTH,
    )
    check_eq(emea.parent, sales.name, "EMEA's parent")

    step("reps in EMEA")
    reps = {}
    for who in ("Ada", "Bob", "Cy"):
        m = goals.CreateMember(
            goal.CreateMemberRequest(
                member=org_pb2.Member(
                    display_name=who,
                    email=f"{who.lower()}@example.com",
                    role=org_pb2.MEMBER_ROLE_REP,
                    subject=who.lower(),
                ),
                request_id=str(uuid.uuid4()),
            ),
            metadata=AUTH,
        )
        goals.CreateMembership(
            goal.CreateMembershipRequest(
                membership=org_pb2.Membership(
                    member=m.name, team=emea.name, start_date=wire_date(today - dt.timedelta(days=60))
                ),
                request_id=str(uuid.uuid4()),
            ),
            metadata=AUTH,
        )
        reps[who] = m

    step("metric and milestones")
    arr = goals.CreateMetric(
        goal.CreateMetricRequest(
            metric=metric_pb2.Metric(
                display_name="New ARR",
                unit=metric_pb2.METRIC_UNIT_CURRENCY,
                currency_code="EUR",
                aggregation=metric_pb2.METRIC_AGGREGATION_SUM,
            ),
            request_id=str(uuid.uuid4()),
        ),
        metadata=AUTH,
    )
    targets = {"Ada": 400_000, "Bob": 400_000, "Cy": 400_000, "EMEA": 1_000_000, "Sales": 2_000_000}
    owners = {"Ada": reps["Ada"].name, "Bob": reps["Bob"].name, "Cy": reps["Cy"].name,
              "EMEA": emea.name, "Sales": sales.name}
    milestones = {}
    for who, target in targets.items():
        ms = goals.CreateMilestone(
            goal.CreateMilestoneRequest(
                milestone=milestone_pb2.Milestone(
                    display_name=f"{who} new ARR",
                    owner=owners[who],
                    metric=arr.name,
                    start_date=wire_date(start),
                    end_date=wire_date(end),
                    target=target,
                    checkpoints=[milestone_pb2.Checkpoint(display_name="halfway", target=target // 2)],
                ),
                activate=True,
                request_id=str(uuid.uuid4()),
            ),
            metadata=AUTH,
        )
        check_eq(ms.state, milestone_pb2.MILESTONE_STATE_ACTIVE, f"{who}'s milestone state")
        milestones[who] = ms

    step("wait until progress tracks every milestone")
    for who, ms in milestones.items():
        p = retry_not_found(
            lambda: prog.GetProgress(progress.GetProgressRequest(name=f"{ms.name}/progress"), metadata=AUTH),
            f"progress of {who}'s milestone",
        )
        check_eq(p.value, 0, f"{who}'s starting value")

    step("badge and rule: achieving a milestone earns the Closer badge and 100 points")
    closer = reco.CreateBadge(
        recognition.CreateBadgeRequest(
            badge=badge_pb2.Badge(display_name="Closer", tier=badge_pb2.BADGE_TIER_GOLD),
            request_id=str(uuid.uuid4()),
        ),
        metadata=AUTH,
    )
    rule = reco.CreateRule(
        recognition.CreateRuleRequest(
            rule=rule_pb2.Rule(
                display_name="Target reached",
                enabled=True,  # proto3 has no "unset" for a bool: say it
                trigger=rule_pb2.RULE_TRIGGER_MILESTONE_ACHIEVED,
                badge=closer.name,
                points=100,
                visibility=visibility_pb2.VISIBILITY_PUBLIC,
            ),
            request_id=str(uuid.uuid4()),
        ),
        metadata=AUTH,
    )
    check(rule.enabled, "the rule is enabled")
    # Recognition's copy of the org knows Ada once her balance can be read.
    retry_not_found(
        lambda: reco.GetPointsBalance(
            recognition.GetPointsBalanceRequest(name=f"{reps['Ada'].name}/pointsBalance"), metadata=AUTH
        ),
        "recognition to know Ada",
    )

    step("watch the recognition feed (from the start: cursor 0)")
    events = queue.Queue()
    cursor = {"seq": 0}
    feed = reco.WatchRecognitions(recognition.WatchRecognitionsRequest(after_sequence=0), metadata=AUTH)

    def consume():
        try:
            for msg in feed:
                if msg.HasField("event"):
                    cursor["seq"] = msg.event.sequence
                    events.put(msg.event)
                else:  # a heartbeat: nothing new up to head_sequence
                    cursor["seq"] = max(cursor["seq"], msg.heartbeat.head_sequence)
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.CANCELLED:
                events.put(e)

    watcher = threading.Thread(target=consume, daemon=True)
    watcher.start()

    step("record activities")
    now = dt.datetime.now(dt.timezone.utc)
    recorded = {"Ada": [150_000, 250_000], "Bob": [100_000], "Cy": [40_000]}

    def record(who, value, request_id):
        occurred = timestamp_pb2.Timestamp()
        occurred.FromDatetime(now)
        req = progress.RecordActivityRequest(
            member=reps[who].name,
            metric=arr.name,
            value=value,
            occurred_at=occurred,
            source="crm",
            external_reference=f"deal-{request_id}",
            request_id=request_id,
        )
        return prog.RecordActivity(req, metadata=AUTH), req

    bob_req = bob_activity = None
    for who, values in recorded.items():
        for value in values:
            activity, req = record(who, value, str(uuid.uuid4()))
            check_eq(activity.value, value, "recorded value")
            check_eq([(c.member, c.amount) for c in activity.credited_amounts], [(reps[who].name, value)],
                     "credit goes to the member")
            if who == "Bob":
                bob_activity, bob_req = activity, req

    step("request_id: a retry returns the first result and counts once")
    again = prog.RecordActivity(bob_req, metadata=AUTH)
    check_eq(again.name, bob_activity.name, "a retried RecordActivity returns the first activity")
    changed = progress.RecordActivityRequest()
    changed.CopyFrom(bob_req)
    changed.value = 999
    err = expect_error(lambda: prog.RecordActivity(changed, metadata=AUTH), grpc.StatusCode.FAILED_PRECONDITION)
    info, _ = details(err)
    check_eq(info.reason, "REQUEST_ID_REUSED", "reason of a reused request_id")

    step("progress equals what was recorded, up the team tree")
    values = {who: sum(v) for who, v in recorded.items()}
    values["EMEA"] = values["Sales"] = sum(values.values())
    for who, ms in milestones.items():
        p = prog.GetProgress(progress.GetProgressRequest(name=f"{ms.name}/progress"), metadata=AUTH)
        check_eq(p.value, values[who], f"{who}'s progress value")
        check_eq(p.target, targets[who], f"{who}'s target")
        check_eq(p.attainment_basis_points, values[who] * 10_000 // targets[who], f"{who}'s attainment")
        check_eq(p.activity_count, len(recorded.get(who, [])) or sum(len(v) for v in recorded.values()),
                 f"{who}'s activity count")
        print(f"   {who:5} {p.value:>9} / {p.target:>9}  {p.attainment_basis_points / 100:6.2f} %  "
              f"{progress_status_name(p.status)}")
    ada = prog.GetProgress(progress.GetProgressRequest(name=f"{milestones['Ada'].name}/progress"), metadata=AUTH)
    check_eq(ada.checkpoints_reached, 1, "Ada's checkpoints reached")

    step("leaderboard of Sales' subtree, by attainment")
    board = prog.GetLeaderboard(
        progress.GetLeaderboardRequest(
            team=sales.name,
            metric=arr.name,
            date_range=reporting_pb2.DateRange(start_date=wire_date(start), end_date=wire_date(end)),
            rank_by=reporting_pb2.RANK_BY_ATTAINMENT,
        ),
        metadata=AUTH,
    )
    rows = [(e.rank, e.member, e.value, e.attainment_basis_points) for e in board.entries]
    for e in board.entries:
        print(f"   #{e.rank} {e.display_name:5} {e.value:>9}  {e.attainment_basis_points / 100:6.2f} %")
    check_eq(rows, [
        (1, reps["Ada"].name, 400_000, 10_000),
        (2, reps["Bob"].name, 100_000, 2_500),
        (3, reps["Cy"].name, 40_000, 1_000),
    ], "leaderboard rows")
    check_eq(board.total_size, 3, "leaderboard size")

    step("the recognition arrives on the feed")
    deadline = time.monotonic() + 20
    award = None
    while award is None:
        left = deadline - time.monotonic()
        check(left > 0, "no recognition arrived within 20 s")
        try:
            ev = events.get(timeout=left)
        except queue.Empty:
            continue
        if isinstance(ev, Exception):
            raise ev
        if ev.HasField("recognition"):
            award = ev.recognition
    check_eq(award.member, reps["Ada"].name, "recognised member")
    check_eq(award.rule, rule.name, "recognition's rule")
    check_eq(award.badge, closer.name, "recognition's badge")
    check_eq(award.points, 100, "recognition's points")
    check_eq(award.milestone, milestones["Ada"].name, "recognition's milestone")
    print(f"   {award.reason}")
    seen = cursor["seq"]
    check(seen > 0, "the cursor moved")
    feed.cancel()
    watcher.join(timeout=5)
    balance = reco.GetPointsBalance(
        recognition.GetPointsBalanceRequest(name=f"{reps['Ada'].name}/pointsBalance"), metadata=AUTH
    )
    check_eq(balance.balance, 100, "Ada's points")

    step("resuming from the stored cursor replays nothing already seen")
    resumed = reco.WatchRecognitions(
        recognition.WatchRecognitionsRequest(after_sequence=seen), metadata=AUTH, timeout=15
    )
    first = next(resumed)
    check(first.HasField("heartbeat"), f"nothing after cursor {seen}, so a heartbeat first; got {first}")
    check(first.heartbeat.head_sequence >= seen, "the heartbeat's head is at or after the cursor")
    resumed.cancel()

    step("bad input: BadRequest names every faulty field")
    err = expect_error(
        lambda: goals.CreateMilestone(
            goal.CreateMilestoneRequest(
                milestone=milestone_pb2.Milestone(
                    display_name="Q5",
                    owner=emea.name,
                    metric=arr.name,
                    fiscal_period="FY2027-Q5",
                    target=0,
                ),
                request_id=str(uuid.uuid4()),
            ),
            metadata=AUTH,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    info, bad = details(err)
    check_eq(info.reason, "INVALID_FIELDS", "reason")
    check_eq(info.domain, "goal.milestones.dev", "domain")
    check(bad is not None, "a BadRequest detail")
    for v in bad.field_violations:
        print(f"   {v.field}: {v.description}")
    check_eq(sorted(v.field for v in bad.field_violations),
             ["milestone.fiscal_period", "milestone.target"], "violated fields")

    occurred = timestamp_pb2.Timestamp()
    occurred.FromDatetime(now)
    err = expect_error(
        lambda: prog.RecordActivity(
            progress.RecordActivityRequest(
                member=reps["Ada"].name, metric=arr.name, value=0, occurred_at=occurred,
                source="Not A Source!", request_id=str(uuid.uuid4()),
            ),
            metadata=AUTH,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    info, bad = details(err)
    check_eq(info.domain, "progress.milestones.dev", "domain")
    check_eq(sorted(v.field for v in bad.field_violations), ["source", "value"], "violated fields")

    step("no token: UNAUTHENTICATED")
    expect_error(lambda: goals.ListTeams(goal.ListTeamsRequest()), grpc.StatusCode.UNAUTHENTICATED)

    channel.close()
    print("python: 1 passed, 0 failed")


def progress_status_name(status):
    from milestones.progress.v1 import progress_pb2

    return progress_pb2.ProgressStatus.Name(status)


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # noqa: BLE001 - report and fail
        print(f"python scenario FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        print("python: 0 passed, 1 failed")
        raise SystemExit(1)
