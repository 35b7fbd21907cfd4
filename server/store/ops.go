package store

import (
	"bytes"
	"encoding/json"
	"fmt"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server/ledger"
)

// Op is one write of a Commit: a record put or delete. Build it with PutNode, DeleteNode and the
// other constructors; a constructor given bad input returns an Op that makes Commit fail with
// ErrInvalid before anything is written. The zero Op is invalid.
type Op struct {
	typ   RecordType
	name  string
	value []byte // nil for a delete
	err   error
}

// Type is the record type the Op writes.
func (o Op) Type() RecordType { return o.typ }

// Name is the record's name (node name, subnet id, policy name, pre-warm id).
func (o Op) Name() string { return o.name }

// IsDelete says whether the Op deletes the record.
func (o Op) IsDelete() bool { return o.value == nil }

func (o Op) String() string {
	if o.IsDelete() {
		return fmt.Sprintf("delete %s %q", o.typ, o.name)
	}
	return fmt.Sprintf("put %s %q", o.typ, o.name)
}

// validator is implemented by record types that can check themselves (ledger.NodeRecord does;
// others may gain a Validate method, and then it is used too).
type validator interface{ Validate() error }

func putRecord(t RecordType, name string, rec any) Op {
	op := Op{typ: t, name: name}
	if err := validName(t, name); err != nil {
		op.err = fmt.Errorf("put %s: %w", t, err)
		return op
	}
	if v, ok := rec.(validator); ok {
		if err := v.Validate(); err != nil {
			op.err = fmt.Errorf("put %s %q: %w: %w", t, name, ErrInvalid, err)
			return op
		}
	}
	b, err := json.Marshal(rec)
	if err != nil {
		op.err = fmt.Errorf("put %s %q: %w: encode: %w", t, name, ErrInvalid, err)
		return op
	}
	op.value = b
	return op
}

func deleteRecord(t RecordType, name string) Op {
	op := Op{typ: t, name: name}
	if err := validName(t, name); err != nil {
		op.err = fmt.Errorf("delete %s: %w", t, err)
	}
	return op
}

// PutNode writes a node record (key nodes/<rec.Name>); the record must pass rec.Validate().
func PutNode(rec ledger.NodeRecord) Op { return putRecord(RecordNode, rec.Name, &rec) }

// DeleteNode deletes nodes/<name>.
func DeleteNode(name string) Op { return deleteRecord(RecordNode, name) }

// PutSubnet writes a subnet record (key subnets/<rec.ID>); it needs a valid CIDR.
func PutSubnet(rec ledger.SubnetRecord) Op {
	if rec.ID != "" && !rec.CIDR.IsValid() {
		return Op{typ: RecordSubnet, name: rec.ID,
			err: fmt.Errorf("put subnet %q: %w: no valid CIDR", rec.ID, ErrInvalid)}
	}
	return putRecord(RecordSubnet, rec.ID, &rec)
}

// DeleteSubnet deletes subnets/<id>.
func DeleteSubnet(id string) Op { return deleteRecord(RecordSubnet, id) }

// PutPolicy writes a node group policy (key policies/<p.Name>) as protojson.
func PutPolicy(p *ipledgerv1.NodePolicy) Op {
	if p == nil {
		return Op{typ: RecordPolicy, err: fmt.Errorf("put policy: %w: nil policy", ErrInvalid)}
	}
	op := Op{typ: RecordPolicy, name: p.GetName()}
	if err := validName(RecordPolicy, op.name); err != nil {
		op.err = fmt.Errorf("put policy: %w", err)
		return op
	}
	b, err := encodePolicy(p)
	if err != nil {
		op.err = fmt.Errorf("put policy %q: %w: encode: %w", op.name, ErrInvalid, err)
		return op
	}
	op.value = b
	return op
}

// DeletePolicy deletes policies/<name>.
func DeletePolicy(name string) Op { return deleteRecord(RecordPolicy, name) }

// PutPrewarm writes a pre-warm reservation (key prewarm/<rec.ID>).
func PutPrewarm(rec ledger.PrewarmRecord) Op { return putRecord(RecordPrewarm, rec.ID, &rec) }

// DeletePrewarm deletes prewarm/<id>.
func DeletePrewarm(id string) Op { return deleteRecord(RecordPrewarm, id) }

// PutIdentity writes a node's attestation (key identities/<id.InstanceId>) as protojson.
func PutIdentity(id *ipledgerv1.NodeIdentity) Op {
	if id == nil {
		return Op{typ: RecordIdentity, err: fmt.Errorf("put identity: %w: nil identity", ErrInvalid)}
	}
	op := Op{typ: RecordIdentity, name: id.GetInstanceId()}
	if err := validName(RecordIdentity, op.name); err != nil {
		op.err = fmt.Errorf("put identity: %w", err)
		return op
	}
	if id.GetNodeName() == "" {
		op.err = fmt.Errorf("put identity %q: %w: no node name", op.name, ErrInvalid)
		return op
	}
	b, err := encodeProto(id)
	if err != nil {
		op.err = fmt.Errorf("put identity %q: %w: encode: %w", op.name, ErrInvalid, err)
		return op
	}
	op.value = b
	return op
}

// DeleteIdentity deletes identities/<instanceID>.
func DeleteIdentity(instanceID string) Op { return deleteRecord(RecordIdentity, instanceID) }

var (
	policyMarshal   = protojson.MarshalOptions{UseProtoNames: true}
	policyUnmarshal = protojson.UnmarshalOptions{DiscardUnknown: true}
)

// encodePolicy writes protojson with snake_case names like the records, compacted: protojson
// deliberately varies its whitespace, and stored values should be byte-stable.
func encodePolicy(p *ipledgerv1.NodePolicy) ([]byte, error) { return encodeProto(p) }

func encodeProto(p proto.Message) ([]byte, error) {
	b, err := policyMarshal.Marshal(p)
	if err != nil {
		return nil, err
	}
	var out bytes.Buffer
	if err := json.Compact(&out, b); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

// decoded is one record read from etcd.
type decoded struct {
	node     *ledger.NodeRecord
	subnet   *ledger.SubnetRecord
	policy   *ipledgerv1.NodePolicy
	prewarm  *ledger.PrewarmRecord
	identity *ipledgerv1.NodeIdentity
}

// decode parses the value of a record key and checks that the record's own name matches the key.
func decode(t RecordType, name string, value []byte) (decoded, error) {
	var d decoded
	var got string
	var err error
	switch t {
	case RecordNode:
		d.node = new(ledger.NodeRecord)
		err = json.Unmarshal(value, d.node)
		got = d.node.Name
	case RecordSubnet:
		d.subnet = new(ledger.SubnetRecord)
		err = json.Unmarshal(value, d.subnet)
		got = d.subnet.ID
	case RecordPolicy:
		d.policy = new(ipledgerv1.NodePolicy)
		err = policyUnmarshal.Unmarshal(value, d.policy)
		got = d.policy.GetName()
	case RecordPrewarm:
		d.prewarm = new(ledger.PrewarmRecord)
		err = json.Unmarshal(value, d.prewarm)
		got = d.prewarm.ID
	case RecordIdentity:
		d.identity = new(ipledgerv1.NodeIdentity)
		err = policyUnmarshal.Unmarshal(value, d.identity)
		got = d.identity.GetInstanceId()
	default:
		return d, fmt.Errorf("%w: unknown record type %q", ErrInvalid, t)
	}
	if err != nil {
		return d, fmt.Errorf("%w: %s %q: decode: %w", ErrInvalid, t, name, err)
	}
	if got != name {
		return d, fmt.Errorf("%w: %s %q: record names itself %q", ErrInvalid, t, name, got)
	}
	return d, nil
}
