// The node's helper program (tests/node/): the pod sandbox ("pause") and the e2e test's client
// and consumer pods. Standard library only, built static (CGO_ENABLED=0).
module oauthapp-operator/node/nodetool

go 1.26.0
