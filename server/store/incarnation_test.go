package store

import (
	"io"
	"log/slog"
	"testing"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
)

func TestIncarnationEndsWhenTheClusterIDChangesOrTheRevisionGoesBack(t *testing.T) {
	in := newIncarnation(slog.New(slog.NewTextHandler(io.Discard, nil)))
	ended := func(ch <-chan struct{}) bool {
		select {
		case <-ch:
			return true
		default:
			return false
		}
	}
	first := in.current()
	in.observe(&etcdserverpb.ResponseHeader{ClusterId: 7, Revision: 10}, 0)
	in.observe(&etcdserverpb.ResponseHeader{ClusterId: 7, Revision: 12}, in.revision())
	// A watch or a serializable read may lag behind: not ordered, not a restore.
	in.observe(&etcdserverpb.ResponseHeader{ClusterId: 7, Revision: 11}, -1)
	// A linearizable answer sent before the revision 12 answer arrived may be older.
	in.observe(&etcdserverpb.ResponseHeader{ClusterId: 7, Revision: 11}, 10)
	if ended(first) || in.revision() != 12 {
		t.Fatalf("same etcd, lagging answers: ended %v at revision %d, want the incarnation kept at 12", ended(first), in.revision())
	}

	// Restored keeping its cluster id: a linearizable answer older than one already seen.
	in.observe(&etcdserverpb.ResponseHeader{ClusterId: 7, Revision: 5}, in.revision())
	if !ended(first) {
		t.Fatal("revision went back from 12 to 5: the incarnation did not end")
	}
	second := in.current()
	if ended(second) || in.revision() != 5 {
		t.Fatalf("after the restore: new incarnation ended %v at revision %d, want open at 5", ended(second), in.revision())
	}

	// Restored with a new cluster token: another cluster id, even at a higher revision.
	in.observe(&etcdserverpb.ResponseHeader{ClusterId: 9, Revision: 40}, -1)
	if !ended(second) {
		t.Fatal("cluster id changed from 7 to 9: the incarnation did not end")
	}
	in.observe(&etcdserverpb.ResponseHeader{ClusterId: 9, Revision: 41}, in.revision())
	if ended(in.current()) {
		t.Fatal("answers of the new cluster ended its own incarnation")
	}
	in.observe(nil, 0)
	in.observe(&etcdserverpb.ResponseHeader{}, 0) // no header: nothing to judge
	if ended(in.current()) {
		t.Fatal("an answer without a header ended the incarnation")
	}
}
