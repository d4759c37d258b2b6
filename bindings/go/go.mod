module smolcap

go 1.19
