package vpccni

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsmiddleware "github.com/aws/aws-sdk-go-v2/aws/middleware"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/smithy-go/middleware"
	"github.com/ipledger/ipledger/server/ec2sim"
)

// ClientConfig configures the EC2 client of one modelled node.
type ClientConfig struct {
	// Endpoint is the simulator's URL (required, loopback only).
	Endpoint string
	// Region of the simulated account (default eu-west-1).
	Region string
	// TimeScale divides the retryer's backoff (the only timer the SDK has); 0 means 1.
	TimeScale float64
	// HTTPClient is shared by many nodes to save connections (nil: a new one). It must buffer
	// request bodies (ec2sim.BufferBodies) like NewHTTPClient's.
	HTTPClient *http.Client
	// OnCall, if set, is called after every HTTP attempt with the EC2 action's name (tests use it
	// to see the order of calls).
	OnCall func(action string)
}

// NewHTTPClient is an HTTP client for many SDK clients talking to the simulator on loopback: a
// large idle pool (hundreds of nodes share it) and buffered request bodies.
func NewHTTPClient() *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConns = 1024
	tr.MaxIdleConnsPerHost = 1024
	tr.IdleConnTimeout = 90 * time.Second
	return &http.Client{Transport: ec2sim.BufferBodies(tr)}
}

// NewEC2Client builds the aws-sdk-go-v2 EC2 client a modelled ipamd uses: static credentials,
// the given endpoint, the SDK's default standard retryer (3 attempts, retry quota) with its
// backoff divided by the time scale, and no client-side rate limiting beyond that.
func NewEC2Client(cfg ClientConfig) (*ec2.Client, error) {
	u, err := url.Parse(cfg.Endpoint)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("vpccni: endpoint %q is not an http(s) URL", cfg.Endpoint)
	}
	if err := ec2sim.CheckLoopback(u.Host); err != nil {
		return nil, fmt.Errorf("vpccni: endpoint %q: %w", cfg.Endpoint, err)
	}
	if cfg.Region == "" {
		cfg.Region = "eu-west-1"
	}
	scale := cfg.TimeScale
	if scale < 1 {
		scale = 1
	}
	hc := cfg.HTTPClient
	if hc == nil {
		hc = NewHTTPClient()
	}
	jitter := retry.NewExponentialJitterBackoff(retry.DefaultMaxBackoff)
	opts := ec2.Options{
		Region:       cfg.Region,
		BaseEndpoint: aws.String(cfg.Endpoint),
		Credentials:  credentials.NewStaticCredentialsProvider("vpccni-model", "vpccni-model", ""),
		HTTPClient:   hc,
		Retryer: retry.NewStandard(func(o *retry.StandardOptions) {
			o.Backoff = retry.BackoffDelayerFunc(func(attempt int, err error) (time.Duration, error) {
				d, derr := jitter.BackoffDelay(attempt, err)
				return time.Duration(float64(d) / scale), derr
			})
		}),
	}
	if cfg.OnCall != nil {
		hook := cfg.OnCall
		opts.APIOptions = append(opts.APIOptions, func(st *middleware.Stack) error {
			return st.Deserialize.Add(middleware.DeserializeMiddlewareFunc("vpccniOnCall",
				func(ctx context.Context, in middleware.DeserializeInput, next middleware.DeserializeHandler) (middleware.DeserializeOutput, middleware.Metadata, error) {
					out, md, err := next.HandleDeserialize(ctx, in)
					hook(awsmiddleware.GetOperationName(ctx))
					return out, md, err
				}), middleware.After)
		})
	}
	return ec2.New(opts), nil
}

// errCode returns the EC2 error code of an SDK error ("" if none).
func errCode(err error) string {
	var ae interface{ ErrorCode() string }
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}
