package ec2sim

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
)

// BufferBodies wraps an http.RoundTripper for aws-sdk-go-v2 clients that talk to a server on
// loopback, such as this simulator. It copies each request body into memory before the
// transport sends it.
//
// Why: smithy-go wraps request bodies in a closer whose WriteTo returns io.EOF once closed, and
// closes it as soon as the response headers arrive. net/http's transport, after writing a body
// of known length, reads it once more to check for surplus bytes. When the response arrives
// before that last read (a fast loopback server, a loaded machine, the race detector), the read
// fails, the transport closes the connection, and the response body being decoded is lost:
// "deserialization failed ... use of closed network connection" on a 200. An in-memory body is
// never closed under the transport. The wrapper is harmless against real EC2.
func BufferBodies(next http.RoundTripper) http.RoundTripper {
	if next == nil {
		next = http.DefaultTransport
	}
	return bufferBodies{next: next}
}

// NewHTTPClient is an HTTP client for aws-sdk-go-v2 (ec2.Options.HTTPClient) that talks to
// the simulator without the loopback race BufferBodies describes.
func NewHTTPClient() *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 64
	return &http.Client{Transport: BufferBodies(tr)}
}

type bufferBodies struct{ next http.RoundTripper }

func (b bufferBodies) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Body == nil || r.Body == http.NoBody {
		return b.next.RoundTrip(r)
	}
	data, err := io.ReadAll(r.Body)
	_ = r.Body.Close()
	if err != nil {
		return nil, fmt.Errorf("ec2sim: buffer request body: %w", err)
	}
	r2 := r.Clone(r.Context())
	r2.Body = io.NopCloser(bytes.NewReader(data))
	r2.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil }
	r2.ContentLength = int64(len(data))
	return b.next.RoundTrip(r2)
}
