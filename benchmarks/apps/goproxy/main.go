// The Go peer of benchmarks/proxy.py: net/http/httputil.ReverseProxy in front of one upstream.
//
//	go build -o goproxy main.go && ./goproxy -listen 127.0.0.1:8080 -upstream http://127.0.0.1:9000
//
// Standard library only (builds with CGO_ENABLED=0 and no module download). The transport keeps
// up to -idle idle upstream connections (Go's default is 2 per host, which would make every
// third concurrent request open a new one); ReverseProxy copies bodies with 32 KiB buffers.
package main

import (
	"flag"
	"log"
	"net/http"
	"net/http/httputil"
	"net/url"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "address to listen on")
	upstream := flag.String("upstream", "http://127.0.0.1:9000", "the upstream's URL")
	idle := flag.Int("idle", 32, "idle upstream connections kept")
	flag.Parse()
	target, err := url.Parse(*upstream)
	if err != nil {
		log.Fatal(err)
	}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.MaxIdleConns = *idle
	transport.MaxIdleConnsPerHost = *idle
	transport.DisableCompression = true
	proxy := httputil.NewSingleHostReverseProxy(target)
	proxy.Transport = transport
	log.Fatal(http.ListenAndServe(*listen, proxy))
}
