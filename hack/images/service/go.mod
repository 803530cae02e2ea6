module local/service

go 1.26
