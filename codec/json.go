package codec

import "encoding/json"

// JSONContentType is the content type of JSON, the default codec.
const JSONContentType = "application/json"

// JSON encodes with encoding/json.
type JSON struct{}

// ContentType returns "application/json".
func (JSON) ContentType() string { return JSONContentType }

// Marshal encodes v as JSON.
func (JSON) Marshal(v any) ([]byte, error) { return json.Marshal(v) }

// Unmarshal decodes JSON data into v.
func (JSON) Unmarshal(data []byte, v any) error { return json.Unmarshal(data, v) }
