package ec2sim

import (
	"sort"
	"time"

	"github.com/ipledger/ipledger/server/instancetypes"
)

// XML shapes of EC2's responses (API 2016-11-15), element names as aws-sdk-go-v2's ec2query
// deserializers read them. Lists are <xxxSet><item>...</item></xxxSet>.

type xmlTag struct {
	Key   string `xml:"key"`
	Value string `xml:"value"`
}

type xmlGroup struct {
	GroupID   string `xml:"groupId"`
	GroupName string `xml:"groupName"`
}

type xmlENIAttachment struct {
	AttachmentID        string `xml:"attachmentId"`
	InstanceID          string `xml:"instanceId,omitempty"`
	InstanceOwnerID     string `xml:"instanceOwnerId,omitempty"`
	DeviceIndex         int    `xml:"deviceIndex"`
	NetworkCardIndex    int    `xml:"networkCardIndex"`
	Status              string `xml:"status"`
	AttachTime          string `xml:"attachTime"`
	DeleteOnTermination bool   `xml:"deleteOnTermination"`
}

type xmlPrivateIP struct {
	PrivateIPAddress string `xml:"privateIpAddress"`
	PrivateDNSName   string `xml:"privateDnsName"`
	Primary          bool   `xml:"primary"`
}

type xmlPrefix struct {
	IPv4Prefix string `xml:"ipv4Prefix"`
}

type xmlAddress struct {
	PrivateIPAddress string `xml:"privateIpAddress"`
}

type xmlENI struct {
	NetworkInterfaceID string            `xml:"networkInterfaceId"`
	SubnetID           string            `xml:"subnetId"`
	VpcID              string            `xml:"vpcId"`
	AvailabilityZone   string            `xml:"availabilityZone,omitempty"`
	AvailabilityZoneID string            `xml:"availabilityZoneId,omitempty"`
	Description        string            `xml:"description"`
	OwnerID            string            `xml:"ownerId"`
	RequesterManaged   *bool             `xml:"requesterManaged,omitempty"`
	Status             string            `xml:"status"`
	MacAddress         string            `xml:"macAddress"`
	PrivateIPAddress   string            `xml:"privateIpAddress"`
	PrivateDNSName     string            `xml:"privateDnsName"`
	SourceDestCheck    bool              `xml:"sourceDestCheck"`
	InterfaceType      string            `xml:"interfaceType"`
	Groups             []xmlGroup        `xml:"groupSet>item"`
	Attachment         *xmlENIAttachment `xml:"attachment,omitempty"`
	PrivateIPs         []xmlPrivateIP    `xml:"privateIpAddressesSet>item"`
	Prefixes           []xmlPrefix       `xml:"ipv4PrefixSet>item"`
	Tags               []xmlTag          `xml:"tagSet>item"`
}

type xmlInstanceState struct {
	Code int    `xml:"code"`
	Name string `xml:"name"`
}

type xmlPlacement struct {
	AvailabilityZone   string `xml:"availabilityZone"`
	AvailabilityZoneID string `xml:"availabilityZoneId"`
	Tenancy            string `xml:"tenancy"`
}

type xmlInstance struct {
	InstanceID         string           `xml:"instanceId"`
	ImageID            string           `xml:"imageId"`
	InstanceState      xmlInstanceState `xml:"instanceState"`
	PrivateDNSName     string           `xml:"privateDnsName"`
	DNSName            string           `xml:"dnsName"`
	AmiLaunchIndex     int              `xml:"amiLaunchIndex"`
	InstanceType       string           `xml:"instanceType"`
	LaunchTime         string           `xml:"launchTime"`
	Placement          xmlPlacement     `xml:"placement"`
	SubnetID           string           `xml:"subnetId,omitempty"`
	VpcID              string           `xml:"vpcId,omitempty"`
	PrivateIPAddress   string           `xml:"privateIpAddress,omitempty"`
	SourceDestCheck    bool             `xml:"sourceDestCheck"`
	Groups             []xmlGroup       `xml:"groupSet>item"`
	Architecture       string           `xml:"architecture"`
	RootDeviceType     string           `xml:"rootDeviceType"`
	VirtualizationType string           `xml:"virtualizationType"`
	Hypervisor         string           `xml:"hypervisor"`
	NetworkInterfaces  []xmlENI         `xml:"networkInterfaceSet>item"`
	Tags               []xmlTag         `xml:"tagSet>item"`
}

type xmlReservation struct {
	ReservationID string        `xml:"reservationId"`
	OwnerID       string        `xml:"ownerId"`
	Groups        []xmlGroup    `xml:"groupSet>item"`
	Instances     []xmlInstance `xml:"instancesSet>item"`
}

type xmlSubnet struct {
	SubnetID                string   `xml:"subnetId"`
	SubnetArn               string   `xml:"subnetArn"`
	State                   string   `xml:"state"`
	VpcID                   string   `xml:"vpcId"`
	OwnerID                 string   `xml:"ownerId"`
	CidrBlock               string   `xml:"cidrBlock"`
	AvailableIPAddressCount int      `xml:"availableIpAddressCount"`
	AvailabilityZone        string   `xml:"availabilityZone"`
	AvailabilityZoneID      string   `xml:"availabilityZoneId"`
	DefaultForAz            bool     `xml:"defaultForAz"`
	MapPublicIPOnLaunch     bool     `xml:"mapPublicIpOnLaunch"`
	AssignIpv6OnCreation    bool     `xml:"assignIpv6AddressOnCreation"`
	Tags                    []xmlTag `xml:"tagSet>item"`
}

type xmlNetworkCard struct {
	NetworkCardIndex         int `xml:"networkCardIndex"`
	MaximumNetworkInterfaces int `xml:"maximumNetworkInterfaces"`
}

type xmlNetworkInfo struct {
	MaximumNetworkInterfaces  int              `xml:"maximumNetworkInterfaces"`
	MaximumNetworkCards       int              `xml:"maximumNetworkCards"`
	DefaultNetworkCardIndex   int              `xml:"defaultNetworkCardIndex"`
	IPv4AddressesPerInterface int              `xml:"ipv4AddressesPerInterface"`
	IPv6AddressesPerInterface int              `xml:"ipv6AddressesPerInterface"`
	IPv6Supported             bool             `xml:"ipv6Supported"`
	EnaSupport                string           `xml:"enaSupport"`
	NetworkCards              []xmlNetworkCard `xml:"networkCards>item"`
}

type xmlInstanceTypeInfo struct {
	InstanceType      string         `xml:"instanceType"`
	CurrentGeneration bool           `xml:"currentGeneration"`
	Hypervisor        string         `xml:"hypervisor,omitempty"`
	BareMetal         bool           `xml:"bareMetal"`
	NetworkInfo       xmlNetworkInfo `xml:"networkInfo"`
}

type xmlCIDRReservation struct {
	SubnetCidrReservationID string `xml:"subnetCidrReservationId"`
	SubnetID                string `xml:"subnetId"`
	Cidr                    string `xml:"cidr"`
	ReservationType         string `xml:"reservationType"`
	OwnerID                 string `xml:"ownerId"`
	Description             string `xml:"description,omitempty"`
}

type xmlStateChange struct {
	InstanceID    string           `xml:"instanceId"`
	CurrentState  xmlInstanceState `xml:"currentState"`
	PreviousState xmlInstanceState `xml:"previousState"`
}

func ec2Time(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.000Z") }

func xmlTags(tags map[string]string) []xmlTag {
	if len(tags) == 0 {
		return nil
	}
	keys := make([]string, 0, len(tags))
	for k := range tags {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]xmlTag, len(keys))
	for i, k := range keys {
		out[i] = xmlTag{Key: k, Value: tags[k]}
	}
	return out
}

func (s *Sim) xmlGroups(ids []string) []xmlGroup {
	out := make([]xmlGroup, len(ids))
	for i, id := range ids {
		name := id
		if id == s.defaultSG {
			name = "default"
		}
		out[i] = xmlGroup{GroupID: id, GroupName: name}
	}
	return out
}

// xmlENIOf renders an ENI; forInstance drops what DescribeInstances does not show.
func (s *Sim) xmlENIOf(e *eni, forInstance bool) xmlENI {
	x := xmlENI{
		NetworkInterfaceID: e.id,
		SubnetID:           e.sn.id,
		VpcID:              e.sn.vpcID,
		Description:        e.description,
		OwnerID:            s.accountID,
		Status:             e.status(),
		MacAddress:         e.mac,
		PrivateIPAddress:   ipString(e.primary),
		PrivateDNSName:     s.privateDNS(e.primary),
		SourceDestCheck:    e.srcDstCheck,
		InterfaceType:      "interface",
		Groups:             s.xmlGroups(e.groups),
	}
	if !forInstance {
		f := false
		x.RequesterManaged = &f
		x.AvailabilityZone = e.sn.az
		x.AvailabilityZoneID = e.sn.azID
		x.Tags = xmlTags(e.tags)
	}
	x.PrivateIPs = append(x.PrivateIPs, xmlPrivateIP{ipString(e.primary), s.privateDNS(e.primary), true})
	for _, a := range e.secondaries {
		x.PrivateIPs = append(x.PrivateIPs, xmlPrivateIP{ipString(a), s.privateDNS(a), false})
	}
	for _, p := range e.prefixes {
		x.Prefixes = append(x.Prefixes, xmlPrefix{prefixString(p)})
	}
	if a := e.att; a != nil {
		xa := &xmlENIAttachment{
			AttachmentID:        a.id,
			DeviceIndex:         a.deviceIndex,
			NetworkCardIndex:    a.cardIndex,
			Status:              a.statusAt(s.now()),
			AttachTime:          ec2Time(a.attachTime),
			DeleteOnTermination: a.deleteOnTermination,
		}
		if !forInstance {
			xa.InstanceID = a.inst.id
			xa.InstanceOwnerID = s.accountID
		}
		x.Attachment = xa
	}
	return x
}

var stateCodes = map[string]int{"pending": 0, "running": 16, "shutting-down": 32, "terminated": 48, "stopping": 64, "stopped": 80}

func xmlState(name string) xmlInstanceState {
	return xmlInstanceState{Code: stateCodes[name], Name: name}
}

// xmlInstanceOf renders an instance with the given ENIs (its own, or as Describe sees them).
func (s *Sim) xmlInstanceOf(in *instance, enis []*eni) xmlInstance {
	x := xmlInstance{
		InstanceID:         in.id,
		ImageID:            "ami-0ec2s1m0000000000",
		InstanceState:      xmlState(in.state),
		AmiLaunchIndex:     in.launchIndex,
		InstanceType:       in.itype.Name,
		LaunchTime:         ec2Time(in.launchTime),
		Placement:          xmlPlacement{AvailabilityZone: in.sn.az, AvailabilityZoneID: in.sn.azID, Tenancy: "default"},
		SourceDestCheck:    true,
		Architecture:       "x86_64",
		RootDeviceType:     "ebs",
		VirtualizationType: "hvm",
		Hypervisor:         "xen", // EC2 reports xen for Xen and Nitro instances alike
		Tags:               xmlTags(in.tags),
	}
	if in.state != "terminated" {
		x.PrivateDNSName = s.privateDNS(in.privateIP)
		x.PrivateIPAddress = ipString(in.privateIP)
		x.SubnetID = in.sn.id
		x.VpcID = in.sn.vpcID
		x.Groups = s.xmlGroups([]string{s.defaultSG})
	}
	enis = append([]*eni(nil), enis...)
	sort.Slice(enis, func(i, j int) bool {
		a, b := enis[i].att, enis[j].att
		if a.cardIndex != b.cardIndex {
			return a.cardIndex < b.cardIndex
		}
		return a.deviceIndex < b.deviceIndex
	})
	for _, e := range enis {
		x.NetworkInterfaces = append(x.NetworkInterfaces, s.xmlENIOf(e, true))
	}
	return x
}

func (s *Sim) xmlSubnetOf(sn *subnet) xmlSubnet {
	return xmlSubnet{
		SubnetID:                sn.id,
		SubnetArn:               "arn:aws:ec2:" + s.region + ":" + s.accountID + ":subnet/" + sn.id,
		State:                   "available",
		VpcID:                   sn.vpcID,
		OwnerID:                 s.accountID,
		CidrBlock:               sn.cidr.String(),
		AvailableIPAddressCount: sn.available(),
		AvailabilityZone:        sn.az,
		AvailabilityZoneID:      sn.azID,
		Tags:                    xmlTags(sn.tags),
	}
}

func xmlInstanceTypeOf(t instancetypes.Type) xmlInstanceTypeInfo {
	hv := t.Hypervisor
	if hv != "nitro" && hv != "xen" {
		hv = ""
	}
	x := xmlInstanceTypeInfo{
		InstanceType:      t.Name,
		CurrentGeneration: true,
		Hypervisor:        hv,
		BareMetal:         t.BareMetal,
		NetworkInfo: xmlNetworkInfo{
			MaximumNetworkInterfaces:  t.MaxENIs,
			MaximumNetworkCards:       t.NetworkCards,
			IPv4AddressesPerInterface: t.IPv4PerENI,
			IPv6AddressesPerInterface: t.IPv4PerENI,
			IPv6Supported:             true,
			EnaSupport:                "required",
		},
	}
	cards := max(t.NetworkCards, 1)
	for c := range cards {
		per := t.MaxENIs / cards
		if c < t.MaxENIs%cards {
			per++
		}
		x.NetworkInfo.NetworkCards = append(x.NetworkInfo.NetworkCards, xmlNetworkCard{NetworkCardIndex: c, MaximumNetworkInterfaces: per})
	}
	return x
}
