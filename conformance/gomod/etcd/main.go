// Command etcd runs the etcd server from the published go.etcd.io/etcd/server/v3 module,
// so that the conformance harness needs no prebuilt etcd binary.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
