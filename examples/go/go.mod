module smolcap-example

go 1.19

require smolcap v0.0.0

replace smolcap => ../../bindings/go
