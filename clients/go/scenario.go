// Command scenario is a short integrator's scenario against a running Sales
// Milestones suite, through a Go client generated from proto/ with protoc,
// protoc-gen-go and protoc-gen-go-grpc.
//
// .ci/clients.sh builds it in GOPATH mode from Debian's Go packages
// (/usr/share/gocode: grpc, protobuf, genproto) plus the code it generates
// into a temporary GOPATH entry; see docs/integrating.md. Environment:
//
//	MILESTONES_ENDPOINT  host:port of the suite (plaintext)
//	MILESTONES_TOKEN     a bearer token with the admin role for a fresh tenant
//
// It creates a team, a rep with a membership, a metric and an active
// milestone, records an activity, checks the progress numbers, checks that a
// retried request_id counts once, and checks the BadRequest details of bad
// input. Any mismatch exits non-zero.
package main

import (
	"context"
	"fmt"
	"os"
	"reflect"
	"sort"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/genproto/googleapis/type/date"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	goalv1 "github.com/sales-milestones/milestones/gen/go/milestones/goal/v1"
	progressv1 "github.com/sales-milestones/milestones/gen/go/milestones/progress/v1"
)

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "go scenario FAILED: "+format+"\n", args...)
	fmt.Println("go: 0 passed, 1 failed")
	os.Exit(1)
}

func must(err error, what string) {
	if err != nil {
		fail("%s: %v", what, err)
	}
}

func eq(got, want interface{}, what string) {
	if !reflect.DeepEqual(got, want) {
		fail("%s: expected %v, got %v", what, want, got)
	}
}

func step(msg string) { fmt.Println("-- " + msg) }

var seq int

// requestID returns a fresh idempotency key for a write.
func requestID() string {
	seq++
	return fmt.Sprintf("go-%d-%d", time.Now().UnixNano(), seq)
}

func wireDate(t time.Time) *date.Date {
	return &date.Date{Year: int32(t.Year()), Month: int32(t.Month()), Day: int32(t.Day())}
}

// retryNotFound calls f until it stops failing with NOT_FOUND: progress learns
// about what goal created from goal's change feed, a moment later.
func retryNotFound(what string, f func() error) {
	deadline := time.Now().Add(20 * time.Second)
	for {
		err := f()
		if err == nil {
			return
		}
		if status.Code(err) != codes.NotFound || time.Now().After(deadline) {
			fail("%s: %v", what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// details returns the ErrorInfo and BadRequest of a failed call's status.
func details(err error) (*errdetails.ErrorInfo, *errdetails.BadRequest) {
	var info *errdetails.ErrorInfo
	var bad *errdetails.BadRequest
	for _, d := range status.Convert(err).Details() {
		switch d := d.(type) {
		case *errdetails.ErrorInfo:
			info = d
		case *errdetails.BadRequest:
			bad = d
		case error:
			fail("undecodable status detail: %v", d)
		}
	}
	if info == nil {
		fail("no ErrorInfo in %v", err)
	}
	return info, bad
}

func violatedFields(bad *errdetails.BadRequest) []string {
	if bad == nil {
		fail("no BadRequest detail")
	}
	var fields []string
	for _, v := range bad.GetFieldViolations() {
		fmt.Printf("   %s: %s\n", v.GetField(), v.GetDescription())
		fields = append(fields, v.GetField())
	}
	sort.Strings(fields)
	return fields
}

func main() {
	endpoint, token := os.Getenv("MILESTONES_ENDPOINT"), os.Getenv("MILESTONES_TOKEN")
	if endpoint == "" || token == "" {
		fail("set MILESTONES_ENDPOINT and MILESTONES_TOKEN")
	}
	dialCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := grpc.DialContext(dialCtx, endpoint, grpc.WithInsecure(), grpc.WithBlock())
	must(err, "dial")
	defer conn.Close()

	// Every call carries the bearer token; the tenant comes from the token.
	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+token)

	step("health")
	h, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: "milestones.goal.v1.GoalService"})
	must(err, "health")
	eq(h.GetStatus(), healthpb.HealthCheckResponse_SERVING, "goal's health")

	goals := goalv1.NewGoalServiceClient(conn)
	prog := progressv1.NewProgressServiceClient(conn)

	step("team, rep, membership, metric, milestone")
	team, err := goals.CreateTeam(ctx, &goalv1.CreateTeamRequest{
		Team: &goalv1.Team{DisplayName: "Nordics"}, RequestId: requestID()})
	must(err, "create team")
	rep, err := goals.CreateMember(ctx, &goalv1.CreateMemberRequest{
		Member: &goalv1.Member{DisplayName: "Gopher", Email: "gopher@example.com",
			Role: goalv1.MemberRole_MEMBER_ROLE_REP, Subject: "gopher"},
		RequestId: requestID()})
	must(err, "create member")
	settings, err := goals.GetTenantSettings(ctx, &goalv1.GetTenantSettingsRequest{})
	must(err, "tenant settings")
	zone := time.UTC
	if settings.GetTimeZone() != "" {
		zone, err = time.LoadLocation(settings.GetTimeZone())
		must(err, "tenant time zone")
	}
	today := time.Now().In(zone)
	_, err = goals.CreateMembership(ctx, &goalv1.CreateMembershipRequest{
		Membership: &goalv1.Membership{Member: rep.GetName(), Team: team.GetName(),
			StartDate: wireDate(today.AddDate(0, 0, -30))},
		RequestId: requestID()})
	must(err, "create membership")
	calls, err := goals.CreateMetric(ctx, &goalv1.CreateMetricRequest{
		Metric: &goalv1.Metric{DisplayName: "Calls", Unit: goalv1.MetricUnit_METRIC_UNIT_COUNT,
			Aggregation: goalv1.MetricAggregation_METRIC_AGGREGATION_SUM},
		RequestId: requestID()})
	must(err, "create metric")
	ms, err := goals.CreateMilestone(ctx, &goalv1.CreateMilestoneRequest{
		Milestone: &goalv1.Milestone{DisplayName: "Gopher calls", Owner: rep.GetName(), Metric: calls.GetName(),
			StartDate: wireDate(today.AddDate(0, 0, -3)), EndDate: wireDate(today.AddDate(0, 0, 27)), Target: 80},
		Activate: true, RequestId: requestID()})
	must(err, "create milestone")
	eq(ms.GetState(), goalv1.MilestoneState_MILESTONE_STATE_ACTIVE, "milestone state")
	teamMs, err := goals.CreateMilestone(ctx, &goalv1.CreateMilestoneRequest{
		Milestone: &goalv1.Milestone{DisplayName: "Nordics calls", Owner: team.GetName(), Metric: calls.GetName(),
			StartDate: wireDate(today.AddDate(0, 0, -3)), EndDate: wireDate(today.AddDate(0, 0, 27)), Target: 200},
		Activate: true, RequestId: requestID()})
	must(err, "create team milestone")

	step("wait until progress tracks the milestones")
	for _, m := range []*goalv1.Milestone{ms, teamMs} {
		name := m.GetName() + "/progress"
		retryNotFound("progress of "+m.GetDisplayName(), func() error {
			_, err := prog.GetProgress(ctx, &progressv1.GetProgressRequest{Name: name})
			return err
		})
	}

	step("record an activity; a retry with its request_id counts once")
	req := &progressv1.RecordActivityRequest{Member: rep.GetName(), Metric: calls.GetName(), Value: 30,
		OccurredAt: timestamppb.Now(), Source: "dialer", RequestId: requestID()}
	first, err := prog.RecordActivity(ctx, req)
	must(err, "record activity")
	again, err := prog.RecordActivity(ctx, req)
	must(err, "retry record activity")
	eq(again.GetName(), first.GetName(), "a retry returns the first activity")

	step("progress equals what was recorded, for the rep and their team")
	for _, c := range []struct {
		m      *goalv1.Milestone
		target int64
	}{{ms, 80}, {teamMs, 200}} {
		p, err := prog.GetProgress(ctx, &progressv1.GetProgressRequest{Name: c.m.GetName() + "/progress"})
		must(err, "get progress")
		eq(p.GetValue(), int64(30), c.m.GetDisplayName()+": value")
		eq(p.GetTarget(), c.target, c.m.GetDisplayName()+": target")
		eq(p.GetAttainmentBasisPoints(), 30*10000/c.target, c.m.GetDisplayName()+": attainment")
		eq(p.GetActivityCount(), int64(1), c.m.GetDisplayName()+": activity count")
		fmt.Printf("   %s: %d / %d (%d bp, %s)\n", c.m.GetDisplayName(), p.GetValue(), p.GetTarget(),
			p.GetAttainmentBasisPoints(), p.GetStatus())
	}

	step("bad input: BadRequest names every faulty field")
	_, err = goals.CreateMilestone(ctx, &goalv1.CreateMilestoneRequest{
		Milestone: &goalv1.Milestone{DisplayName: "Q5", Owner: team.GetName(), Metric: calls.GetName(),
			FiscalPeriod: "FY2027-Q5", Target: 0},
		RequestId: requestID()})
	eq(status.Code(err), codes.InvalidArgument, "code of bad input")
	info, bad := details(err)
	eq(info.GetReason(), "INVALID_FIELDS", "reason")
	eq(info.GetDomain(), "goal.milestones.dev", "domain")
	eq(violatedFields(bad), []string{"milestone.fiscal_period", "milestone.target"}, "violated fields")

	_, err = prog.RecordActivity(ctx, &progressv1.RecordActivityRequest{Member: rep.GetName(), Metric: calls.GetName(),
		Value: 0, OccurredAt: timestamppb.Now(), Source: "Not A Source!", RequestId: requestID()})
	eq(status.Code(err), codes.InvalidArgument, "code of bad input")
	info, bad = details(err)
	eq(info.GetDomain(), "progress.milestones.dev", "domain")
	eq(violatedFields(bad), []string{"source", "value"}, "violated fields")

	step("a reused request_id with another payload")
	req.Value = 31
	_, err = prog.RecordActivity(ctx, req)
	eq(status.Code(err), codes.FailedPrecondition, "code of a reused request_id")
	info, _ = details(err)
	eq(info.GetReason(), "REQUEST_ID_REUSED", "reason")

	fmt.Println("go: 1 passed, 0 failed")
}
