// Command driver runs one original Go node (the packages of ../shared/seed-go, unchanged) for
// grpc-gossip's interoperability tests, driven by stdin commands, one per line:
//
//	connect ID HOST:PORT    ConnectToNeighbor
//	send ID HASH SIZE       SendMessage of SIZE bytes (the payload is a function of HASH)
//	broadcast HASH SIZE     Broadcast (the original's fanout to its neighbours)
//	quit                    StopGRPC and exit
//
// and reporting on stdout, one line each:
//
//	listening HOST:PORT
//	received FROM HASH SIZE FNV1A64    a message read by the node's server (MessageStream or
//	                                   Stream), with the 64-bit FNV-1a of its payload in hex
//	acked HASH                         a hash that came out of the node's CompleteChan
//	sent HASH | error WHAT: WHY
//
// The server is the original's GossipServer on a plain grpc.NewServer(), as StartGRPCServer
// builds it (with -max-recv, a larger grpc.MaxRecvMsgSize, as an operator may set); the driver
// only wraps each stream's Recv to report what arrived.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"hash/fnv"
	"io"
	"log"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sukasukasuka123/Gossip/GossipStreamFactory"
	"github.com/sukasukasuka123/Gossip/Logger"
	"github.com/sukasukasuka123/Gossip/NeighborManage"
	"github.com/sukasukasuka123/Gossip/NodeManage"
	"github.com/sukasukasuka123/Gossip/Router"
	"github.com/sukasukasuka123/Gossip/Storage"
	"github.com/sukasukasuka123/Gossip/StorageManage"
	pb "github.com/sukasukasuka123/Gossip/gossip_rpc/proto"
	"google.golang.org/grpc"
)

var out = struct {
	sync.Mutex
	w *bufio.Writer
}{w: bufio.NewWriter(os.Stdout)}

func say(format string, args ...interface{}) {
	out.Lock()
	defer out.Unlock()
	fmt.Fprintf(out.w, format+"\n", args...)
	out.w.Flush()
}

// Payload is what `send` and `broadcast` carry: SIZE bytes derived from the hash
// (byte i = hash[i % len(hash)] XOR i), so that the receiving side can check them.
func payload(hash string, size int) []byte {
	b := make([]byte, size)
	for i := range b {
		b[i] = hash[i%len(hash)] ^ byte(i)
	}
	return b
}

func report(m *pb.GossipMessage) {
	h := fnv.New64a()
	h.Write(m.PayLoad)
	say("received %s %s %d %016x", m.FromHash, m.Hash, len(m.PayLoad), h.Sum64())
}

type messageStream struct {
	pb.Gossip_MessageStreamServer
}

func (s messageStream) Recv() (*pb.GossipMessage, error) {
	m, err := s.Gossip_MessageStreamServer.Recv()
	if m != nil {
		report(m)
	}
	return m, err
}

type singleStream struct {
	pb.Gossip_StreamServer
}

func (s singleStream) Recv() (*pb.GossipMessage, error) {
	m, err := s.Gossip_StreamServer.Recv()
	if m != nil {
		report(m)
	}
	return m, err
}

// server is the original's GossipServer with each stream's Recv reported.
type server struct {
	*NodeManage.GossipServer
}

func (s server) MessageStream(stream pb.Gossip_MessageStreamServer) error {
	return s.GossipServer.MessageStream(messageStream{stream})
}

func (s server) Stream(stream pb.Gossip_StreamServer) error {
	return s.GossipServer.Stream(singleStream{stream})
}

func main() {
	id := flag.String("id", "go", "this node's id (NodeHash)")
	listen := flag.String("listen", "127.0.0.1:0", "address of the gRPC server")
	slots := flag.Int64("slots", 200, "the original's storage slots")
	ttl := flag.Duration("ttl", 120*time.Second, "the original's storage TTL")
	maxRecv := flag.Int("max-recv", 0, "the server's grpc.MaxRecvMsgSize (0: grpc-go's default, 4 MiB)")
	flag.Parse()
	// The original logs every frame; keep stdout for the reports.
	log.SetOutput(os.Stderr)

	factory := GossipStreamFactory.NewDoubleStreamFactory(10 * time.Minute)
	node := NodeManage.NewDoubleStreamNode(
		*id,
		Router.NewFanoutRouter(),
		Logger.NewLogger(),
		NeighborManage.NewMemoryNeighborStore(),
		factory,
		StorageManage.NewStorageManage(Storage.NewLocalStorage(*slots, *ttl)),
	)
	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("listen %s: %v", *listen, err)
	}
	var options []grpc.ServerOption
	if *maxRecv > 0 {
		options = append(options, grpc.MaxRecvMsgSize(*maxRecv))
	}
	grpcServer := grpc.NewServer(options...)
	pb.RegisterGossipServer(grpcServer, server{NodeManage.NewGossipServer(node)})
	go func() {
		if err := grpcServer.Serve(lis); err != nil {
			log.Printf("serve: %v", err)
		}
	}()
	go func() {
		for hash := range node.MM.CompleteChan {
			say("acked %s", hash)
		}
	}()
	say("listening %s", lis.Addr())

	in := bufio.NewReader(os.Stdin)
	for {
		line, err := in.ReadString('\n')
		if err == io.EOF {
			break
		}
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		switch {
		case f[0] == "connect" && len(f) == 3:
			info := NeighborManage.NeighborInfo{NodeHash: f[1], Endpoint: f[2], Online: true}
			if err := node.ConnectToNeighbor(info); err != nil {
				say("error connect: %v", err)
			} else {
				say("connected %s", f[1])
			}
		case f[0] == "send" && len(f) == 4:
			size, _ := strconv.Atoi(f[3])
			m := &pb.GossipMessage{Hash: f[2], PayLoad: payload(f[2], size)}
			if err := node.SendMessage(f[1], m); err != nil {
				say("error send %s: %v", f[2], err)
			} else {
				say("sent %s", f[2])
			}
		case f[0] == "broadcast" && len(f) == 3:
			size, _ := strconv.Atoi(f[2])
			node.Broadcast(&pb.GossipMessage{Hash: f[1], PayLoad: payload(f[1], size)})
			say("sent %s", f[1])
		case f[0] == "quit":
			grpcServer.Stop()
			node.StopGRPC()
			return
		default:
			say("error command: %q", strings.TrimSpace(line))
		}
	}
	grpcServer.Stop()
}
