package ctlconfig

import (
	"os"
	"path/filepath"
	"testing"
)

func TestContextFile(t *testing.T) {
	for _, tc := range []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{EnvFile: "/x/c.yaml", "XDG_CONFIG_HOME": "/xdg", "HOME": "/home/u"}, "/x/c.yaml"},
		{map[string]string{"XDG_CONFIG_HOME": "/xdg", "HOME": "/home/u"}, "/xdg/ipledger/config.yaml"},
		{map[string]string{"HOME": "/home/u"}, "/home/u/.config/ipledger/config.yaml"},
		{nil, ""},
	} {
		if got := Path(func(k string) string { return tc.env[k] }); got != tc.want {
			t.Errorf("Path with %v = %q, want %q", tc.env, got, tc.want)
		}
	}
	// A context an owner made current goes with it, and the one it replaced comes back.
	path := filepath.Join(t.TempDir(), "config.yaml")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(Update(path, func(f *File) error {
		f.Set(Context{Name: "prod", Server: "10.0.1.7:7400"})
		f.CurrentContext = "prod"
		return nil
	}))
	must(Update(path, func(f *File) error {
		f.Set(Context{Name: "ipledger-demo", Server: "127.0.0.1:7400", Owner: "ipledger-demo", PreviousContext: f.CurrentContext})
		f.CurrentContext = "ipledger-demo"
		return nil
	}))
	must(Update(path, func(f *File) error {
		if !f.Delete("ipledger-demo") {
			t.Fatal("not deleted")
		}
		return nil
	}))
	f, err := Load(path)
	must(err)
	if f.CurrentContext != "prod" || len(f.Contexts) != 1 {
		t.Fatalf("after the demo's context went: %+v", f)
	}
	for _, bad := range []string{"contexts: [{name: a}, {name: a}]\n", "contexts: [{name: 'a b'}]\n", "current: x\n", "contexts: {}\n"} {
		must(os.WriteFile(path, []byte(bad), 0o600))
		if _, err := Load(path); err == nil {
			t.Errorf("Load accepts %q", bad)
		}
	}
}
