package ec2gw

import (
	"bytes"
	"fmt"
	"io"
	"net/http"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
)

// newHTTPClient is the SDK's buildable HTTP client with a larger idle pool: the SDK keeps 10
// connections per host, and the gateway sends bursts of up to a bucket's capacity at once. It
// stays a *BuildableClient so that config.LoadDefaultConfig can apply AWS_CA_BUNDLE to it.
func newHTTPClient() *awshttp.BuildableClient {
	return awshttp.NewBuildableClient().WithTransportOptions(func(t *http.Transport) {
		t.MaxIdleConns = maxIdleConns
		t.MaxIdleConnsPerHost = maxIdleConns
	})
}

// bufferBodies is the EC2 client's HTTP client: it copies each request body into memory before
// the underlying client sends it.
//
// Why: smithy-go closes a request body as soon as the response headers arrive, while net/http
// may still read it once more after writing it; when the response wins that race the transport
// closes the connection and a 200's body is lost ("deserialization failed ... use of closed
// network connection", aws/aws-sdk-go-v2#2737, #1825). For the gateway that is worse than an
// error: the call succeeded, and retrying a non-idempotent call such as an explicit assign would
// then report the gateway's own address as in use. EC2 Query bodies are small.
type bufferBodies struct{ next aws.HTTPClient }

var _ aws.HTTPClient = bufferBodies{}

func (b bufferBodies) Do(r *http.Request) (*http.Response, error) {
	if r.Body == nil || r.Body == http.NoBody {
		return b.next.Do(r)
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
	return b.next.Do(r2)
}
