module github.com/heraldbus/herald/bench

go 1.26.0

require (
	github.com/ThreeDotsLabs/watermill v1.5.1
	github.com/heraldbus/herald v0.0.0
	go.uber.org/goleak v1.3.0
)

require (
	github.com/eapache/go-resiliency v1.7.0 // indirect
	github.com/google/uuid v1.6.0 // indirect
	github.com/lithammer/shortuuid/v3 v3.0.7 // indirect
	github.com/oklog/ulid v1.3.1 // indirect
	github.com/pkg/errors v0.9.1 // indirect
	github.com/segmentio/ksuid v1.0.4 // indirect
	google.golang.org/protobuf v1.36.12 // indirect
)

replace github.com/heraldbus/herald => ../
