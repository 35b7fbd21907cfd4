package cni

import (
	"fmt"
	"os"

	"github.com/containernetworking/cni/pkg/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
)

// agentConn is a connection to the node's agent. The plugin talks to nothing else.
type agentConn struct {
	ipledgerv1.CNIServiceClient
	conn   *grpc.ClientConn
	socket string
}

// dialAgent connects to the agent's unix socket. A socket that does not exist is reported at
// once as the agent being unreachable (CNI code 11), with a hint for the human reading it.
func dialAgent(socket string) (*agentConn, error) {
	fi, err := os.Stat(socket)
	if err != nil {
		return nil, types.NewError(types.ErrTryAgainLater,
			fmt.Sprintf("ipledger: agent unreachable at %s: %v (is ipledger-agent running on this node?)", socket, err), "")
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return nil, types.NewError(types.ErrTryAgainLater,
			fmt.Sprintf("ipledger: agent unreachable at %s: not a unix socket", socket), "")
	}
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, types.NewError(types.ErrTryAgainLater,
			fmt.Sprintf("ipledger: agent unreachable at %s: %v", socket, err), "")
	}
	return &agentConn{CNIServiceClient: ipledgerv1.NewCNIServiceClient(conn), conn: conn, socket: socket}, nil
}

func (a *agentConn) Close() { _ = a.conn.Close() }
