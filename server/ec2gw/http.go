package ec2gw

import (
	"bytes"
	"fmt"
	"io"
	"net/http"

	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
)

// newHTTPClient is the gateway's HTTP client: the SDK's default transport with a larger idle
// pool (the SDK keeps 10 connections per host; the gateway sends bursts of up to a bucket's
// capacity at once) and request bodies buffered in memory.
//
// Why buffer: smithy-go closes a request body as soon as the response headers arrive, while
// net/http may still read it once more after writing it; when the response wins that race the
// transport closes the connection and a 200's body is lost ("deserialization failed ... use of
// closed network connection", aws/aws-sdk-go-v2#2737, #1825). For the gateway that is worse than
// an error: the call succeeded, and retrying a non-idempotent call such as an explicit assign
// would then report the gateway's own address as in use. EC2 Query bodies are small.
func newHTTPClient() *http.Client {
	tr := awshttp.NewBuildableClient().GetTransport()
	tr.MaxIdleConns = maxIdleConns
	tr.MaxIdleConnsPerHost = maxIdleConns
	return &http.Client{
		Transport: bufferBodies{next: tr},
		// EC2 does not redirect; never follow one to somewhere else.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// bufferBodies copies each request body into memory before the transport sends it.
type bufferBodies struct{ next http.RoundTripper }

func (b bufferBodies) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Body == nil || r.Body == http.NoBody {
		return b.next.RoundTrip(r)
	}
	data, err := io.ReadAll(r.Body)
	_ = r.Body.Close()
	if err != nil {
		return nil, fmt.Errorf("ec2gw: buffer request body: %w", err)
	}
	r2 := r.Clone(r.Context())
	r2.Body = io.NopCloser(bytes.NewReader(data))
	r2.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil }
	r2.ContentLength = int64(len(data))
	return b.next.RoundTrip(r2)
}
