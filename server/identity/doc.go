// Package identity owns node attestation on the server: it decides whether an agent that
// presents a signed EC2 instance identity document and a CSR gets a node certificate, and which
// node name that certificate carries.
//
// An attestation is accepted when, in this order (every check is local until the EC2 call, so a
// flood of bad documents costs no EC2 budget):
//
//  1. the server has an issuing CA (else ErrDisabled);
//  2. the document's signature verifies with AWS's certificate of its region (package iid);
//  3. the CSR is well formed and signed by its key;
//  4. the document's account is one the server accepts and its region is the server's;
//  5. the instance has no attestation yet, or one with the same key (a restart after the
//     certificate expired); another key is ErrAlreadyAttested until an admin forgets the
//     identity (Forget) or the instance is gone (Sweep deletes its record);
//  6. EC2 (DescribeInstances through the gateway, at node-start priority) knows the instance,
//     it is running or pending, in one of the accepted VPCs, carries the cluster tag, its launch
//     time equals the document's pendingTime, its private address and type are the document's,
//     and, for a first attestation, it was launched no longer ago than MaxInstanceAge.
//
// Then it signs a certificate (NodeCertificateLifetime) naming the node (the instance's private
// DNS name, or its instance id) and the instance, and records the attestation in etcd
// (identities/<instance-id>) with a conditional, fenced commit: created only while absent,
// updated only at the revision it read. A refused attestation writes nothing. Renew issues a
// new certificate to a node that presents its current attested certificate, for the same key.
//
// It never changes the ledger, never holds a lock across etcd or EC2, runs its writes and its
// sweep only on the leader, and never sees a node's private key.
package identity
